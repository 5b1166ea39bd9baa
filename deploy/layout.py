"""Where the local topology lives and listens: its folder, its servers and their ports.

Ports are derived from one base port: PgBouncer on base, Redis on base+1, the service (each app
host, on its own address) on base+2, nginx on base+3, PostgreSQL servers from base+10 (each
primary followed by its replicas), monitoring's exporters on base+30 to base+39.

The highly available topology (the default of `up`; `--plain` is the old one) runs every cluster
under Patroni with a 3-member etcd. Its extra listeners sit in a second block, base+40 to base+99,
that no other topology can claim: test topologies take blocks 100 ports apart (tests/conftest.py
`free_base_port`) and check only the first 40 of theirs. etcd member i listens for clients on
base+40+2i and for peers on base+41+2i (base+40..45); the Patroni REST API of the k-th server
listens on base+50+k (up to 50 servers).
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
ETCD_MEMBERS = 3
ETCD_OFFSET = 40
PATRONI_REST_OFFSET = 50
# The highly available topology's listeners end before base+100, where the next block begins.
HA_SPAN = 100


@dataclass(frozen=True)
class Node:
    """One PostgreSQL server of the local topology."""

    alias: str
    cluster: str
    role: str  # "primary" or "replica"
    port: int
    datadir: Path
    primary_port: int
    # Highly available topology: the member's Patroni REST port (None in the plain one). `role`
    # is then only the role it was created with: Patroni decides who leads (deploy/patroni.py).
    rest_port: int | None = None

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
    # Every cluster under Patroni with a 3-member etcd. False here (a layout.json written before
    # the option existed is a plain topology); `up` chooses True unless --plain.
    ha: bool = False

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise TopologyError("--shards must be at least 1")
        if not 0 <= self.replicas <= 4:
            raise TopologyError("--replicas must be between 0 and 4")
        if not 0 <= self.app_hosts <= 8:
            raise TopologyError("--app-hosts must be between 0 (one service on loopback) and 8")
        if not 1024 < self.base_port < 65000:
            raise TopologyError("--base-port must be between 1025 and 64999")
        if self.ha and self.base_port + HA_SPAN > 65536:
            raise TopologyError(
                f"--base-port {self.base_port}: the highly available topology listens up to base "
                f"port + {HA_SPAN - 1}; pick a base port below {65536 - HA_SPAN} (or --plain)")
        servers = (1 + self.shards) * (1 + self.replicas)
        if self.ha and servers > HA_SPAN - PATRONI_REST_OFFSET:
            raise TopologyError(
                f"the highly available topology has REST ports for up to "
                f"{HA_SPAN - PATRONI_REST_OFFSET} servers ({servers} asked); use fewer shards or "
                "replicas")

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
        """Every server. Under Patroni members are named `<cluster>_m<i>`: any of them may lead,
        so none is named as the primary (the cluster's name is PgBouncer's entry for whichever
        member leads)."""
        nodes: list[Node] = []
        for index, cluster in enumerate(self.cluster_names):
            primary_port = self.base_port + 10 + index * (1 + self.replicas)
            for member in range(1 + self.replicas):
                if self.ha:
                    alias = f"{cluster}_m{member}"
                else:
                    alias = cluster if member == 0 else f"{cluster}_replica_{member}"
                rest_port = self.base_port + PATRONI_REST_OFFSET + len(nodes)
                nodes.append(
                    Node(
                        alias=alias,
                        cluster=cluster,
                        role="primary" if member == 0 else "replica",
                        port=primary_port + member,
                        datadir=self.root / "pg" / alias / "data",
                        primary_port=primary_port,
                        rest_port=rest_port if self.ha else None,
                    )
                )
        return nodes

    def members(self, cluster: str) -> list[Node]:
        found = [node for node in self.nodes() if node.cluster == cluster]
        if not found:
            raise TopologyError(
                f"no cluster {cluster!r} in this topology; known: {', '.join(self.cluster_names)}")
        return found

    def etcd_ports(self) -> list[tuple[int, int]]:
        """(client, peer) port of each etcd member."""
        first = self.base_port + ETCD_OFFSET
        return [(first + 2 * i, first + 2 * i + 1) for i in range(ETCD_MEMBERS)]

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
