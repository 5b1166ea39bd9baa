"""Local topology manager: a control cluster and N shards of PostgreSQL primaries with streaming
replicas, PgBouncer in transaction mode, Redis, and the service under Gunicorn, all in one folder.

    python -m deploy.topology up [--shards 2 --replicas 1 --base-port 15400 --dir .var]
    python -m deploy.topology status | down | destroy

`up` is idempotent: it starts what is stopped, creates what is missing (so `--shards 3` on a
two-shard topology adds `shard_2`), and rewrites the topology file that settings read.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg

from deploy import processes as proc
from deploy.processes import TopologyError
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.lsn import current_lsn, format_lsn

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
    # Extra postgresql.conf settings for every server (tests set a non-UTC time zone here).
    pg_settings: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.shards < 1:
            raise TopologyError("--shards must be at least 1")
        if not 0 <= self.replicas <= 4:
            raise TopologyError("--replicas must be between 0 and 4")
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


class LocalTopology:
    """Creates, starts, inspects and stops the processes of one LocalLayout."""

    def __init__(self, layout: LocalLayout, *, echo=print) -> None:
        self.layout = layout
        self.echo = echo

    # ----- up
    def up(self, *, service: bool = True, migrate: bool = True) -> None:
        layout = self.layout
        saved = LocalLayout.load(layout.root)
        if saved is not None and (saved.replicas, saved.base_port) != (
            layout.replicas,
            layout.base_port,
        ):
            raise TopologyError(
                f"{layout.root} holds a topology with {saved.replicas} replica(s) per primary on "
                f"base port {saved.base_port}; run `destroy` first to change those"
            )
        if saved is not None and saved.shards > layout.shards:
            raise TopologyError(
                f"{layout.root} has {saved.shards} shards; removing shards is not supported "
                "(move their tenants away, then destroy and recreate)"
            )
        for binary in ("initdb", "pg_ctl", "pg_basebackup", "postgres"):
            pg_bin(binary)
        proc.require_binary("pgbouncer", "pgbouncer")
        proc.require_binary("redis-server", "redis-server")

        proc.make_dir(layout.root)
        proc.check_reachable_by_service_user(layout.root)
        layout.save()

        nodes = layout.nodes()
        for node in nodes:
            if node.role == "primary":
                self._ensure_primary(node)
        for node in nodes:
            if node.role == "replica":
                self._ensure_replica(node)
        self._ensure_pgbouncer()
        self._ensure_redis()
        before = layout.topology_file.read_text() if layout.topology_file.exists() else None
        self.write_topology_file()
        changed = before is not None and before != layout.topology_file.read_text()
        self.echo(f"topology file: {layout.topology_file}")
        self.secret_key()
        self.echo(f"secret key: {layout.root / 'secret-key'} (for manage.py: "
                  f"export SHARDSVC_SECRET_KEY=\"$(cat {layout.root / 'secret-key'})\")")
        if migrate:
            self.migrate()
        if changed:
            # Workers load the shard map once (preload_app): a new shard needs new workers.
            self.restart_services()
        if service:
            self.start_service()

    def _ensure_primary(self, node: Node) -> None:
        if not (node.datadir / "PG_VERSION").exists():
            self.echo(f"[{node.alias}] creating primary on port {node.port}")
            self._init_datadir(node)
        self._write_server_conf(node)
        self._start_postgres(node)
        self._provision(node)

    def _init_datadir(self, node: Node) -> None:
        # One initdb per primary (not a copy of one): every cluster then has its own system
        # identifier, which logical replication puts in its table-sync slot names.
        proc.make_dir(node.datadir.parent, service_owned=True)
        proc.run(
            proc.as_service_user(
                [
                    pg_bin("initdb"),
                    "-D", str(node.datadir),
                    "-U", ADMIN_USER,
                    "--auth=trust",
                    "-E", "UTF8",
                    "--no-locale",
                    "--no-sync",
                ]
            ),
            what=f"initdb for {node.alias}",
        )
        conf = node.datadir / "postgresql.conf"
        self._append_as_service_user(conf, "\ninclude_if_exists = 'shardsvc.conf'\n")
        hba = (
            "# Local topology: trust on loopback only; never expose these ports.\n"
            "local all all trust\n"
            "host all all 127.0.0.1/32 trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        self._write_as_service_user(node.datadir / "pg_hba.conf", hba)

    def _write_server_conf(self, node: Node) -> None:
        settings = {
            "port": str(node.port),
            "listen_addresses": "'127.0.0.1'",
            # Socket paths are limited to 107 bytes; TCP on loopback only avoids deep folders.
            "unix_socket_directories": "''",
            "cluster_name": f"'{node.alias}'",
            "max_connections": "300",
            "shared_buffers": "32MB",
            # Tenant moves use logical replication: slots, senders and apply workers.
            "wal_level": "logical",
            "max_wal_senders": "20",
            "max_replication_slots": "20",
            "max_worker_processes": "16",
            "max_logical_replication_workers": "8",
            "wal_keep_size": "256MB",
            # Last guard against a leaked replication slot holding WAL forever.
            "max_slot_wal_keep_size": "4GB",
            # A new subscription's apply worker starts this long after the last one was
            # dropped (5 s by default): back-to-back moves wait for it.
            "wal_retrieve_retry_interval": "'1s'",
            "hot_standby": "on",
            "hot_standby_feedback": "on",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %q%u@%d '",
        }
        if not self.layout.durable:
            settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        for key, value in self.layout.pg_settings.items():
            settings[key] = value
        text = "# Written by deploy/topology.py on every `up`; edit the layout, not this file.\n"
        text += "".join(f"{key} = {value}\n" for key, value in settings.items())
        self._write_as_service_user(node.datadir / "shardsvc.conf", text)

    def _write_as_service_user(self, path: Path, text: str) -> None:
        path.write_text(text)
        proc.chown_to_service_user(path)

    def _append_as_service_user(self, path: Path, text: str) -> None:
        with path.open("a") as handle:
            handle.write(text)

    def postgres_running(self, node: Node) -> bool:
        if not (node.datadir / "PG_VERSION").exists():
            return False
        status = subprocess.run(
            proc.as_service_user([pg_bin("pg_ctl"), "status", "-D", str(node.datadir)]),
            capture_output=True,
            check=False,
        )
        return status.returncode == 0

    def _start_postgres(self, node: Node) -> None:
        if self.postgres_running(node):
            return
        proc.require_free_port(node.port, f"PostgreSQL {node.alias}")
        proc.run(
            proc.as_service_user(
                [
                    pg_bin("pg_ctl"),
                    "start",
                    "-D", str(node.datadir),
                    "-l", str(node.log),
                    "-w",
                    "-t", "60",
                ]
            ),
            what=f"starting PostgreSQL {node.alias} on port {node.port}",
            log=node.log,
        )

    def _provision(self, node: Node) -> None:
        """The application role and database on a primary (replicas inherit them)."""
        with self.admin_connect(node, dbname="postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_USER]).fetchone():
                # pg_monitor: the service reads replay positions and pg_stat_activity.
                conn.execute(f'CREATE ROLE "{APP_USER}" LOGIN IN ROLE pg_monitor')
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [APP_DB]
            ).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{APP_DB}" OWNER "{APP_USER}"')

    def _ensure_replica(self, node: Node) -> None:
        if not (node.datadir / "PG_VERSION").exists():
            self.echo(f"[{node.alias}] cloning a streaming replica of port {node.primary_port}")
            shutil.rmtree(node.datadir, ignore_errors=True)
            proc.make_dir(node.datadir.parent, service_owned=True)
            proc.run(
                proc.as_service_user(
                    [
                        pg_bin("pg_basebackup"),
                        "-D", str(node.datadir),
                        "-d",
                        f"host=127.0.0.1 port={node.primary_port} user={ADMIN_USER} "
                        f"application_name={node.alias}",
                        "-X", "stream",
                        "-R",
                        "--checkpoint=fast",
                        "--no-sync",
                    ]
                ),
                what=f"pg_basebackup for {node.alias}",
            )
        self._write_server_conf(node)
        self._start_postgres(node)

    # ----- PgBouncer and Redis -------------------------------------------------------------------
    @property
    def pgbouncer_dir(self) -> Path:
        return self.layout.root / "pgbouncer"

    def pgbouncer_config(self) -> str:
        databases = "".join(
            f"{node.alias} = host=127.0.0.1 port={node.port} dbname={APP_DB}\n"
            for node in self.layout.nodes()
        )
        template = (PROJECT_DIR / "deploy" / "pgbouncer.ini.template").read_text()
        return template.format(
            databases=databases,
            port=self.layout.pgbouncer_port,
            dir=self.pgbouncer_dir,
            admin_user=ADMIN_USER,
        )

    def _ensure_pgbouncer(self) -> None:
        folder = proc.make_dir(self.pgbouncer_dir, service_owned=True)
        ini = folder / "pgbouncer.ini"
        self._write_as_service_user(ini, self.pgbouncer_config())
        # trust auth still needs the user names listed.
        self._write_as_service_user(
            folder / "userlist.txt", f'"{APP_USER}" ""\n"{ADMIN_USER}" ""\n'
        )
        pid = proc.read_pid(folder / "pgbouncer.pid")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)  # reload: picks up new shards
            return
        proc.require_free_port(self.layout.pgbouncer_port, "PgBouncer")
        proc.run(
            proc.as_service_user(["pgbouncer", "-d", str(ini)]),
            what="starting PgBouncer",
            log=folder / "pgbouncer.log",
        )
        proc.wait_for_port(
            self.layout.pgbouncer_port, timeout=10, what="PgBouncer", log=folder / "pgbouncer.log"
        )

    @property
    def redis_dir(self) -> Path:
        return self.layout.root / "redis"

    def _ensure_redis(self) -> None:
        folder = proc.make_dir(self.redis_dir)
        if proc.read_pid(folder / "redis.pid") is not None:
            return
        proc.require_free_port(self.layout.redis_port, "Redis")
        proc.run(
            [
                proc.require_binary("redis-server", "redis-server"),
                "--port", str(self.layout.redis_port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "yes",
                "--dir", str(folder),
                "--pidfile", str(folder / "redis.pid"),
                "--logfile", str(folder / "redis.log"),
            ],
            what="starting Redis",
            log=folder / "redis.log",
        )
        proc.wait_for_port(
            self.layout.redis_port, timeout=10, what="Redis", log=folder / "redis.log"
        )

    # ----- topology file
    def pooled_dsn(self, alias: str) -> str:
        return f"postgresql://{APP_USER}@127.0.0.1:{self.layout.pgbouncer_port}/{alias}"

    def write_topology_file(self) -> Path:
        lines = [
            "# Written by `python -m deploy.topology up`. dsn: through PgBouncer (the app);",
            "# direct_dsn: straight to the server (DDL, replication, moves).",
            "",
        ]
        by_cluster: dict[str, list[Node]] = {}
        for node in self.layout.nodes():
            by_cluster.setdefault(node.cluster, []).append(node)
        for cluster, nodes in by_cluster.items():
            primary, replicas = nodes[0], nodes[1:]
            table = "control" if cluster == CONTROL_ALIAS else "shards"
            lines.append("[control]" if table == "control" else "[[shards]]")
            if table == "shards":
                lines.append(f'name = "{cluster}"')
            lines.append(f'dsn = "{self.pooled_dsn(primary.alias)}"')
            lines.append(f'direct_dsn = "{primary.direct_dsn}"')
            for replica in replicas:
                lines.append(f"[[{table}.replicas]]")
                lines.append(f'dsn = "{self.pooled_dsn(replica.alias)}"')
                lines.append(f'direct_dsn = "{replica.direct_dsn}"')
            lines.append("")
        lines += ["[redis]", f'url = "redis://127.0.0.1:{self.layout.redis_port}/0"', ""]
        path = self.layout.topology_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(path)  # readers never see half a file
        return path

    # ----- the service
    def settings_env(self) -> dict[str, str]:
        """What any process loading the settings for this topology needs: the service, its
        management commands, and a test or benchmark process that sets Django up itself."""
        return {
            "DJANGO_SETTINGS_MODULE": "project.settings",
            "SHARDSVC_TOPOLOGY": str(self.layout.topology_file),
            "SHARDSVC_SECRET_KEY": self.secret_key(),
            # Plain HTTP on loopback: no HTTPS redirect, no Secure-only cookies, no HSTS.
            "SHARDSVC_HTTPS": "0",
        }

    def service_env(self, **overrides: str) -> dict[str, str]:
        env = dict(os.environ)
        # Only a service gets a Prometheus folder (start_service): a management command writing
        # its samples into a running service's folder would show up in that service's /metrics.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env.update(self.settings_env())
        env.update(
            SHARDSVC_OPS_TOKEN=self.ops_token(),
            SHARDSVC_BIND=f"127.0.0.1:{self.layout.http_port}",
            SHARDSVC_WORKERS=str(self.layout.workers),
            PYTHONPATH=str(PROJECT_DIR),
        )
        env.update(overrides)
        return env

    def ops_token(self) -> str:
        """The token of the ops API for this topology, made once and kept in its folder."""
        return self._secret_file("ops-token", 24)

    def secret_key(self) -> str:
        """Django's SECRET_KEY for this topology (signs user and causal tokens, sessions):
        made once, kept next to the topology file."""
        return self._secret_file("secret-key", 48)

    def _secret_file(self, name: str, nbytes: int) -> str:
        path = self.layout.root / name
        if not path.exists():
            # Created with mode 600 (not chmod after writing): never readable by others.
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_urlsafe(nbytes) + "\n")
        return path.read_text().strip()

    def manage(self, *args: str, **env: str) -> str:
        return proc.run(
            [sys.executable, "-m", "django", *args],
            what=f"django-admin {' '.join(args)}",
            env=self.service_env(**env),
            cwd=PROJECT_DIR,
        )

    def migrate(self) -> None:
        # migrate_shards migrates control first (shards take their global id generator from its
        # registry), then every shard primary in parallel, over direct connections, under the
        # cluster lock; it exits non-zero (TopologyError here) unless everything is migrated.
        self.echo("migrating control and shards (manage.py migrate_shards)")
        output = self.manage("migrate_shards")
        # The summary table: a header, one row per database, and the timing line.
        for line in output.splitlines()[-(len(self.layout.cluster_names) + 2):]:
            self.echo(line)

    def start_service(
        self, *, name: str = "service", port: int | None = None, **env: str
    ) -> ServiceProcess:
        port = port or self.layout.http_port
        folder = proc.make_dir(self.layout.root / name)
        service = ServiceProcess(folder=folder, port=port)
        if service.running():
            return service
        (folder / "port").write_text(f"{port}\n")
        (folder / "env.json").write_text(json.dumps(env))  # for restart_services
        proc.require_free_port(port, f"the service ({name})")
        env.setdefault("SHARDSVC_BIND", f"127.0.0.1:{port}")
        # Prometheus multiprocess files of this service's workers, emptied before it starts:
        # files of an earlier run would add their counts to this one's.
        metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(folder / "metrics")))
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        with (folder / "gunicorn.log").open("ab") as log:
            subprocess.Popen(
                [
                    sys.executable, "-m", "gunicorn",
                    "-c", str(PROJECT_DIR / "deploy" / "gunicorn.conf.py"),
                    "--pid", str(service.pidfile),
                    "project.wsgi:application",
                ],
                cwd=PROJECT_DIR,
                env=self.service_env(**env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the caller; `down` stops it by pid file
            )
        service.wait_ready(timeout=60)
        self.echo(f"service: http://127.0.0.1:{port}/ (log {folder / 'gunicorn.log'})")
        return service

    def restart_services(self) -> None:
        """Stop and start every running service with the settings it was started with."""
        for pidfile in sorted(self.layout.root.glob("*/gunicorn.pid")):
            service = ServiceProcess.in_folder(pidfile.parent)
            if not service.running():
                continue
            env_file = pidfile.parent / "env.json"
            env = json.loads(env_file.read_text()) if env_file.exists() else {}
            service.stop()
            self.echo(f"restarting service {pidfile.parent.name} for the new topology")
            self.start_service(name=pidfile.parent.name, port=service.port, **env)

    # ----- status, down, destroy ----------------------------------------------------------------
    def admin_connect(self, node: Node, *, dbname: str = APP_DB) -> psycopg.Connection:
        return pg.connect(f"host=127.0.0.1 port={node.port} user={ADMIN_USER} dbname={dbname}")

    def status_rows(self) -> Iterator[dict[str, str]]:
        primaries_lsn: dict[str, int] = {}
        for node in self.layout.nodes():
            row = {"component": "postgres", "name": node.alias, "port": str(node.port),
                   "state": "stopped", "detail": ""}
            if self.postgres_running(node):
                row["state"] = "running"
                try:
                    row["detail"] = self._replication_detail(node, primaries_lsn)
                except psycopg.Error as exc:
                    row["state"], row["detail"] = "unreachable", str(exc).strip()
            yield row
        bouncer = proc.read_pid(self.pgbouncer_dir / "pgbouncer.pid")
        yield {"component": "pgbouncer", "name": "pgbouncer",
               "port": str(self.layout.pgbouncer_port),
               "state": "running" if bouncer else "stopped", "detail": "pool_mode=transaction"}
        redis = proc.read_pid(self.redis_dir / "redis.pid")
        yield {"component": "redis", "name": "redis", "port": str(self.layout.redis_port),
               "state": "running" if redis else "stopped", "detail": "no persistence"}
        for folder in sorted(self.layout.root.glob("*/gunicorn.pid")):
            service = ServiceProcess.in_folder(folder.parent)
            yield {"component": "service", "name": folder.parent.name,
                   "port": str(service.port),
                   "state": "running" if service.running() else "stopped",
                   "detail": "gunicorn + gevent"}

    def _replication_detail(self, node: Node, primaries_lsn: dict[str, int]) -> str:
        with self.admin_connect(node) as conn:
            if node.role == "primary":
                wal = current_lsn(conn)
                primaries_lsn[node.cluster] = wal
                senders = pg.fetch_value(conn, "SELECT count(*) FROM pg_stat_replication")
                return f"primary, {senders} streaming replica(s), wal {format_lsn(wal)}"
            replay, delay = pg.fetch_row(
                conn,
                "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn, "
                "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
                "ELSE extract(epoch FROM now() - pg_last_xact_replay_timestamp()) END",
            )
            if replay is None:
                return f"replica, nothing replayed yet, lag {float(delay or 0):.2f} s"
            behind = ""
            if node.cluster in primaries_lsn:
                behind = f", {max(primaries_lsn[node.cluster] - int(replay), 0)} bytes behind"
            return (f"replica, replay {format_lsn(int(replay))}, "
                    f"lag {float(delay or 0):.2f} s{behind}")

    def down(self) -> None:
        for folder in sorted(self.layout.root.glob("*/gunicorn.pid")):
            if proc.stop_pid(folder, timeout=20):
                self.echo(f"stopped service {folder.parent.name}")
        if proc.stop_pid(self.pgbouncer_dir / "pgbouncer.pid"):
            self.echo("stopped pgbouncer")
        if proc.stop_pid(self.redis_dir / "redis.pid"):
            self.echo("stopped redis")
        # Replicas first, so primaries do not wait on walsenders of replicas shutting down.
        for node in sorted(self.layout.nodes(), key=lambda n: n.role != "replica"):
            if self.postgres_running(node):
                proc.run(
                    proc.as_service_user(
                        [pg_bin("pg_ctl"), "stop", "-D", str(node.datadir), "-m", "fast",
                         "-w", "-t", "60"]
                    ),
                    what=f"stopping {node.alias}",
                    log=node.log,
                )
                self.echo(f"stopped postgres {node.alias}")

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.layout.root, ignore_errors=True)
        self.echo(f"removed {self.layout.root}")

    def stop_node(self, alias: str, mode: str = "fast") -> None:
        node = self.node(alias)
        proc.run(
            proc.as_service_user(
                [pg_bin("pg_ctl"), "stop", "-D", str(node.datadir), "-m", mode, "-w"]
            ),
            what=f"stopping {alias}",
            log=node.log,
        )

    def start_node(self, alias: str) -> None:
        self._start_postgres(self.node(alias))

    def node(self, alias: str) -> Node:
        for node in self.layout.nodes():
            if node.alias == alias:
                return node
        known = ", ".join(n.alias for n in self.layout.nodes())
        raise TopologyError(f"no server {alias!r} in this topology; known: {known}")


@dataclass
class ServiceProcess:
    """A Gunicorn master started by LocalTopology.start_service."""

    folder: Path
    port: int

    @property
    def pidfile(self) -> Path:
        return self.folder / "gunicorn.pid"

    @property
    def log(self) -> Path:
        return self.folder / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def running(self) -> bool:
        return proc.read_pid(self.pidfile) is not None

    @classmethod
    def in_folder(cls, folder: Path) -> ServiceProcess:
        port_file = folder / "port"
        return cls(folder=folder, port=int(port_file.read_text()) if port_file.exists() else 0)

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise TopologyError(
            f"the service did not answer /healthz on port {self.port} within {timeout:.0f} s "
            f"({last_error}){proc.log_tail(self.log, 40)}"
        )

    def stop(self) -> None:
        proc.stop_pid(self.pidfile, timeout=20)


# ----- command line
def layout_from_args(args: argparse.Namespace) -> LocalLayout:
    root = Path(args.dir).resolve()
    saved = LocalLayout.load(root)
    def pick(name: str, default):
        value = getattr(args, name, None)
        if value is not None:
            return value
        return getattr(saved, name) if saved is not None else default

    return LocalLayout(
        root=root,
        base_port=pick("base_port", int(os.environ.get("SHARDSVC_BASE_PORT", DEFAULT_BASE_PORT))),
        shards=pick("shards", 2),
        replicas=pick("replicas", 1),
        workers=pick("workers", 2),
        durable=saved.durable if saved is not None else True,
        pg_settings=saved.pg_settings if saved is not None else {},
    )


def print_table(rows: list[dict[str, str]]) -> None:
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in columns}
    print("  ".join(c.upper().ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in columns))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.topology", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("verb", choices=["up", "down", "status", "destroy"])
    parser.add_argument("--dir", default=os.environ.get("SHARDSVC_DIR", str(DEFAULT_DIR)),
                        help="data folder (default .var/ in the project)")
    parser.add_argument("--base-port", type=int, help="first of the ports used (default 15400)")
    parser.add_argument("--shards", type=int, help="number of shards (default 2)")
    parser.add_argument("--replicas", type=int, help="streaming replicas per primary (default 1)")
    parser.add_argument("--workers", type=int, help="gunicorn gevent workers (default 2)")
    parser.add_argument("--no-service", action="store_true", help="do not start gunicorn")
    parser.add_argument("--no-migrate", action="store_true", help="do not run migrations")
    args = parser.parse_args(argv)
    try:
        topology = LocalTopology(layout_from_args(args))
        if args.verb == "up":
            topology.up(service=not args.no_service, migrate=not args.no_migrate)
            print_table(list(topology.status_rows()))
        elif args.verb == "status":
            if LocalLayout.load(topology.layout.root) is None:
                print(f"no topology in {topology.layout.root}; run `up` first")
                return 1
            print_table(list(topology.status_rows()))
        elif args.verb == "down":
            topology.down()
        else:
            topology.destroy()
    except TopologyError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
