"""Where the local topology lives and listens: its folder, its servers and their ports.

Ports are derived from one base port: PgBouncer on base, Redis on base+1, the service (each app
host, on its own address) on base+2, nginx on base+3, PostgreSQL servers from base+10 (each
primary followed by its replicas).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deploy import processes as proc
from deploy.processes import TopologyError
from shards.aliases import CONTROL_ALIAS

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEFAULT_DIR = PROJECT_DIR / ".var"
DEFAULT_BASE_PORT = 15400
PG_BINDIR = Path(os.environ.get("PG_BINDIR", "/usr/lib/postgresql/15/bin"))
APP_USER = "app"
APP_DB = "app"
ADMIN_USER = "postgres"


@dataclass(frozen=True)
class Node:
    """One PostgreSQL server of the local topology."""

    alias: str
    cluster: str
    role: str  # "primary" or "replica"
    port: int
    datadir: Path
    primary_port: int

    @property
    def log(self) -> Path:
        return self.datadir.parent / "postgres.log"

    @property
    def direct_dsn(self) -> str:
        return f"postgresql://{ADMIN_USER}@127.0.0.1:{self.port}/{APP_DB}"


@dataclass(frozen=True)
class LocalLayout:
    """Where everything lives and listens. Ports are derived from one base port."""

    root: Path
    base_port: int = DEFAULT_BASE_PORT
    shards: int = 2
    replicas: int = 1
    durable: bool = True
    workers: int = 2
    # 0: one service on loopback; N: N app hosts, each in its own network namespace.
    app_hosts: int = 0
    # Extra postgresql.conf settings for every server (tests set a non-UTC time zone here).
    pg_settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise TopologyError("--shards must be at least 1")
        if not 0 <= self.replicas <= 4:
            raise TopologyError("--replicas must be between 0 and 4")
        if not 0 <= self.app_hosts <= 8:
            raise TopologyError("--app-hosts must be between 0 (one service on loopback) and 8")
        if not 1024 < self.base_port < 65000:
            raise TopologyError("--base-port must be between 1025 and 64999")

    @property
    def pgbouncer_port(self) -> int:
        return self.base_port

    @property
    def redis_port(self) -> int:
        return self.base_port + 1

    @property
    def http_port(self) -> int:
        return self.base_port + 2

    @property
    def edge_port(self) -> int:
        """nginx, in front of the app hosts."""
        return self.base_port + 3

    @property
    def topology_file(self) -> Path:
        return self.root / "topology.toml"

    @property
    def cluster_names(self) -> list[str]:
        return [CONTROL_ALIAS] + [f"shard_{i}" for i in range(self.shards)]

    def nodes(self) -> list[Node]:
        nodes = []
        for index, cluster in enumerate(self.cluster_names):
            primary_port = self.base_port + 10 + index * (1 + self.replicas)
            for member in range(1 + self.replicas):
                alias = cluster if member == 0 else f"{cluster}_replica_{member}"
                nodes.append(
                    Node(
                        alias=alias,
                        cluster=cluster,
                        role="primary" if member == 0 else "replica",
                        port=primary_port + member,
                        datadir=self.root / "pg" / alias / "data",
                        primary_port=primary_port,
                    )
                )
        return nodes

    def save(self) -> None:
        data = asdict(self)
        data["root"] = str(self.root)
        data["pg_settings"] = dict(self.pg_settings)
        (self.root / "layout.json").write_text(json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> LocalLayout | None:
        path = root / "layout.json"
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        data["root"] = Path(data["root"])
        return cls(**data)


def pg_bin(name: str) -> str:
    return proc.require_binary(str(PG_BINDIR / name), "postgresql-15")
