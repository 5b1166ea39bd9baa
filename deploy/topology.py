"""Local topology manager: a control cluster and N shards of PostgreSQL primaries with streaming
replicas, PgBouncer in transaction mode, Redis, and the service under Gunicorn behind nginx, all
in one folder. By default every cluster runs under Patroni with a 3-member etcd (automatic
failover, PgBouncer re-pointed at the new leader); `--plain` starts the servers without them.

    python -m deploy.topology up [--shards 2 --replicas 1 --base-port 15400 --dir .var]
                                 [--app-hosts N] [--no-monitoring] [--plain]
                                 [--scrape-interval 15s --alert-for 1s]
    python -m deploy.topology restart-app --rolling   # deploy: one app host at a time
    python -m deploy.topology status | down | destroy

`up` is idempotent: it starts what is stopped, creates what is missing (so `--shards 3` on a
two-shard topology adds `shard_2`), and rewrites the topology file that settings read.

Here: the topology file, status and the command line. The folder and ports are in `layout.py`,
PgBouncer and Redis in `pooler.py`, the PostgreSQL servers in `postgres_nodes.py` (under Patroni:
`patroni.py`, `etcd.py`, and `leader_follower.py` for PgBouncer), the service in `services.py`,
nginx and the app hosts in `edge.py`, their network namespaces in `app_network.py`, Prometheus
and its exporters in `monitoring.py`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg

from deploy import processes as proc
from deploy.demo import ensure_demo
from deploy.edge import EdgeControl
from deploy.etcd import EtcdControl
from deploy.layout import (
    ADMIN_USER,
    APP_DB,
    APP_USER,
    DEFAULT_BASE_PORT,
    DEFAULT_DIR,
    PROJECT_DIR,
    LocalLayout,
    Node,
    pg_bin,
)
from deploy.monitoring import MonitoringControl, MonitorParams
from deploy.patroni import PatroniControl
from deploy.pooler import PoolerControl
from deploy.postgres_nodes import PostgresNodes
from deploy.processes import TopologyError
from deploy.services import ServiceControl, ServiceProcess
from shards.aliases import CONTROL_ALIAS

# The layout and the service process are defined beside this module; tests and scripts find
# them here with the topology itself.
__all__ = [
    "PROJECT_DIR",
    "LocalLayout",
    "LocalTopology",
    "Node",
    "ServiceProcess",
    "main",
]


class LocalTopology(PostgresNodes, PoolerControl, EtcdControl, PatroniControl, ServiceControl,
                    EdgeControl, MonitoringControl):
    """Creates, starts, inspects and stops the processes of one LocalLayout."""

    # ----- up
    def up(self, *, service: bool = True, migrate: bool = True,
           monitoring: MonitorParams | None = None) -> None:
        layout = self.layout
        saved = LocalLayout.load(layout.root)
        if saved is not None and (saved.replicas, saved.base_port, saved.ha) != (
            layout.replicas,
            layout.base_port,
            layout.ha,
        ):
            kind = "highly available" if saved.ha else "plain"
            raise TopologyError(
                f"{layout.root} holds a {kind} topology with {saved.replicas} replica(s) per "
                f"primary on base port {saved.base_port}; run `destroy` first to change those"
            )
        if saved is not None and saved.app_hosts != layout.app_hosts and any(
            ServiceProcess.in_folder(pid.parent).running()
            for pid in layout.root.glob("*/gunicorn.pid")
        ):
            raise TopologyError(
                f"{layout.root} runs {saved.app_hosts or 'no'} app host(s); run `down` first to "
                "change --app-hosts"
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

        if layout.ha:
            self.ensure_etcd()
            self.ensure_patroni()
        else:
            nodes = layout.nodes()
            for node in nodes:
                if node.role == "primary":
                    self._ensure_primary(node)
            for node in nodes:
                if node.role == "replica":
                    self._ensure_replica(node)
        if layout.app_hosts:
            # PgBouncer and Redis listen on the bridge too: create it before they start.
            self.network.ensure_bridge()
        self._ensure_pgbouncer()
        if layout.ha:
            self.ensure_follower()
        self._ensure_redis()
        # Running services follow the topology file within seconds (shards/live_topology.py):
        # it is published once migrated, so no tenant is placed on a shard without tables.
        before = layout.topology_file.read_text() if layout.topology_file.exists() else None
        staged = self.write_topology_file(layout.topology_file.with_name("topology.next.toml"))
        changed = before is not None and before != staged.read_text()
        self.secret_key()
        self.echo(f"secret key: {layout.root / 'secret-key'} (for manage.py: "
                  f"export SHARDSVC_SECRET_KEY=\"$(cat {layout.root / 'secret-key'})\")")
        if migrate:
            self.migrate(SHARDSVC_TOPOLOGY=str(staged))
        staged.replace(layout.topology_file)
        self.echo(f"topology file: {layout.topology_file}"
                  + (" (changed: running services follow it)" if changed else ""))
        self.collectstatic()
        if service:
            self.start_app_hosts()
            self.ensure_edge()
        if monitoring is not None:
            self.ensure_monitoring(monitoring)

    # ----- topology file
    def pooled_dsn(self, alias: str) -> str:
        # App hosts in namespaces reach PgBouncer and Redis over the bridge, as real hosts would
        # over the network; processes on this machine reach the same address.
        host = self.service_address()
        return f"postgresql://{APP_USER}@{host}:{self.layout.pgbouncer_port}/{alias}"

    def write_topology_file(self, path: Path | None = None) -> Path:
        """Write the topology file (or the same text at `path`, to stage a change)."""
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
            if self.layout.ha:
                # PgBouncer's entry named by the cluster follows the leader; admin work reaches
                # whichever member accepts writes; every member is a replica candidate (the
                # service reads only from one in recovery).
                hosts = ",".join(f"127.0.0.1:{n.port}" for n in nodes)
                lines.append(f'dsn = "{self.pooled_dsn(cluster)}"')
                lines.append(f'direct_dsn = "postgresql://{ADMIN_USER}@{hosts}/{APP_DB}'
                             '?target_session_attrs=read-write"')
                urls = ", ".join(f'"{self.rest_url(n)}"' for n in nodes)
                lines.append(f"patroni = [{urls}]")
                primary, replicas = nodes[0], nodes
            else:
                lines.append(f'dsn = "{self.pooled_dsn(primary.alias)}"')
                lines.append(f'direct_dsn = "{primary.direct_dsn}"')
            for replica in replicas:
                lines.append(f"[[{table}.replicas]]")
                lines.append(f'dsn = "{self.pooled_dsn(replica.alias)}"')
                lines.append(f'direct_dsn = "{replica.direct_dsn}"')
            lines.append("")
        lines += ["[redis]",
                  f'url = "redis://{self.service_address()}:{self.layout.redis_port}/0"', ""]
        lines += self.topology_file_edge_lines()
        path = path or self.layout.topology_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines))
        tmp.replace(path)  # readers never see half a file
        return path

    # ----- status, down, destroy ----------------------------------------------------------------
    def status_rows(self) -> Iterator[dict[str, str]]:
        if self.layout.ha:
            yield from self.etcd_status_rows()
            yield from self.patroni_status_rows()
        primaries_lsn: dict[str, int] = {}
        for node in [] if self.layout.ha else self.layout.nodes():
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
                   "detail": f"gunicorn + gevent on {service.host}"}
        yield {"component": "nginx", "name": "edge", "port": str(self.layout.edge_port),
               "state": "running" if self.edge_pid() else "stopped",
               "detail": f"in front of {len(self.app_hosts())} app host(s)"}
        yield from self.monitoring_status_rows()

    def down(self) -> None:
        if self.stop_monitoring():
            self.echo("stopped prometheus and its exporters")
        for folder in sorted(self.layout.root.glob("*/gunicorn.pid")):
            if proc.stop_pid(folder, timeout=20):
                self.echo(f"stopped service {folder.parent.name}")
        if self.stop_edge():
            self.echo("stopped nginx")
        if self.layout.ha and self.stop_follower():
            self.echo("stopped the leader follower")
        if proc.stop_pid(self.pgbouncer_dir / "pgbouncer.pid"):
            self.echo("stopped pgbouncer")
        if proc.stop_pid(self.redis_dir / "redis.pid"):
            self.echo("stopped redis")
        if self.layout.ha:
            if self.stop_patroni():
                self.echo("stopped patroni (and its PostgreSQL servers)")
            if self.stop_etcd():
                self.echo("stopped etcd")
        self.stop_all_postgres()
        self.network.remove()  # namespaces and bridge, once nothing runs in them

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.layout.root, ignore_errors=True)
        self.echo(f"removed {self.layout.root}")


# ----- command line
def layout_from_args(args: argparse.Namespace) -> LocalLayout:
    root = Path(args.dir).resolve()
    saved = LocalLayout.load(root)
    plain = bool(getattr(args, "plain", False))
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
        app_hosts=pick("app_hosts", 0),
        durable=saved.durable if saved is not None else True,
        pg_settings=saved.pg_settings if saved is not None else {},
        # Highly available unless --plain; a saved topology keeps its kind (`up` refuses a
        # change of kind without `destroy`).
        ha=saved.ha if saved is not None and not plain else not plain,
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
    parser.add_argument("verb", choices=["up", "down", "status", "destroy", "restart-app",
                                         "demo"])
    parser.add_argument("--dir", default=os.environ.get("SHARDSVC_DIR", str(DEFAULT_DIR)),
                        help="data folder (default .var/ in the project)")
    parser.add_argument("--base-port", type=int, help="first of the ports used (default 15400)")
    parser.add_argument("--shards", type=int, help="number of shards (default 2)")
    parser.add_argument("--replicas", type=int, help="streaming replicas per primary (default 1)")
    parser.add_argument("--workers", type=int, help="gunicorn gevent workers (default 2)")
    parser.add_argument("--app-hosts", type=int,
                        help="app hosts, each in its own network namespace (root only; "
                             "default 0: one service on loopback)")
    parser.add_argument("--rolling", action="store_true",
                        help="restart-app: one host at a time, out of rotation while it restarts")
    parser.add_argument("--plain", action="store_true",
                        help="up: PostgreSQL primaries and streaming replicas without Patroni and "
                             "etcd (less memory; no failover). Default: every cluster under "
                             "Patroni with a 3-member etcd")
    parser.add_argument("--no-service", action="store_true", help="do not start gunicorn")
    parser.add_argument("--no-migrate", action="store_true", help="do not run migrations")
    parser.add_argument("--no-monitoring", action="store_true",
                        help="do not start Prometheus and its exporters")
    parser.add_argument("--scrape-interval",
                        help="Prometheus scrape and rule interval (default 15s; kept)")
    parser.add_argument("--alert-for",
                        help="replace every alert rule's `for:` (tests: 1s; default: the rules')")
    args = parser.parse_args(argv)
    try:
        topology = LocalTopology(layout_from_args(args))
        if args.verb == "up":
            topology.up(service=not args.no_service, migrate=not args.no_migrate,
                        monitoring=None if args.no_monitoring else topology.monitor_params(
                            scrape_interval=args.scrape_interval, alert_for=args.alert_for))
            print_table(list(topology.status_rows()))
        elif args.verb == "status":
            if LocalLayout.load(topology.layout.root) is None:
                print(f"no topology in {topology.layout.root}; run `up` first")
                return 1
            print_table(list(topology.status_rows()))
        elif args.verb == "restart-app":
            if not args.rolling:
                parser.error("restart-app needs --rolling (the only way it restarts)")
            topology.restart_app_hosts_rolling()
        elif args.verb == "demo":
            url = ensure_demo(topology.layout, edge_url=topology.edge_url,
                              ops_token=topology.ops_token(), static_root=topology.static_root)
            print(f"demo page (another origin, the widget on it): {url}")
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
