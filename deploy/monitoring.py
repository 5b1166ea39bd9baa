"""Monitoring of the local topology: Prometheus and its exporters, in the topology's folder.

`MonitoringControl` is part of LocalTopology (it needs the layout and the app hosts). It starts:
  - one `prometheus-postgres-exporter` per PostgreSQL server (port: the server's + 20), with the
    custom queries of deploy/prometheus/queries (the control primary's exporter also reads the
    MoveJob table);
  - `prometheus-pgbouncer-exporter` (base + 8), `prometheus-redis-exporter` (base + 7) and
    `prometheus-node-exporter` with only its filesystem collector (base + 6, for disk alerts);
  - Prometheus (base + 9), scraping those, every app host's `/metrics` and, in the highly
    available topology, every Patroni member's REST API `/metrics`, with the recording and
    alert rules of deploy/prometheus/rules.
Every one runs as the unprivileged `prometheus` user (Debian's packages create it) when we are
root, with its files under <topology>/monitoring. All listen on loopback, except Prometheus,
which listens where the app hosts reach PgBouncer and Redis (the ops dashboard queries it).

Two parameters, kept in monitoring/params.json so a later `up` renders the same: the scrape
(and rule evaluation) interval, and `alert_for`, which replaces every alert's `for:` (tests use
a second or two, so an alert fires within a few seconds of its cause).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import processes as proc
from deploy.layout import ADMIN_USER, APP_DB, PROJECT_DIR, LocalLayout, Node
from deploy.processes import TopologyError
from shards.aliases import CONTROL_ALIAS

PROMETHEUS_DIR = PROJECT_DIR / "deploy" / "prometheus"
MONITOR_USER = os.environ.get("SHARDSVC_MONITOR_USER", "prometheus")
DEFAULT_SCRAPE_INTERVAL = "15s"
# An exporter's port is its server's plus this: PostgreSQL servers take base + 10 onwards, so
# up to 20 servers keep their exporters clear of them.
POSTGRES_EXPORTER_OFFSET = 20
_DURATION = re.compile(r"^[0-9]+(ms|s|m|h)$")


@dataclass(frozen=True)
class Exporter:
    """One exporter process: its name (pid and log file), port and command line."""

    name: str
    port: int
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class MonitorParams:
    scrape_interval: str = DEFAULT_SCRAPE_INTERVAL
    alert_for: str | None = None  # None: the rules' own `for:`

    def __post_init__(self) -> None:
        for name, value in (("scrape interval", self.scrape_interval),
                            ("alert for", self.alert_for)):
            if value is not None and not _DURATION.match(value):
                raise TopologyError(f"{name} {value!r} is not a Prometheus duration (e.g. 15s, 1m)")


class MonitoringControl:
    layout: LocalLayout
    echo: Callable[[str], None]
    service_address: Callable[[], str]
    app_hosts: Callable[[], list]

    # ----- where things are
    @property
    def monitoring_dir(self) -> Path:
        return self.layout.root / "monitoring"

    @property
    def prometheus_port(self) -> int:
        return self.layout.base_port + 9

    def prometheus_url(self) -> str:
        return f"http://{self.service_address()}:{self.prometheus_port}"

    def monitoring_env(self) -> dict[str, str]:
        """What the service needs to find Prometheus (the ops dashboard's charts and alerts)."""
        return {"SHARDSVC_PROMETHEUS_URL": self.prometheus_url()}

    def monitor_params(self, *, scrape_interval: str | None = None,
                       alert_for: str | None = None) -> MonitorParams:
        """The parameters given, else those the topology's monitoring was started with."""
        path = self.monitoring_dir / "params.json"
        saved = MonitorParams(**json.loads(path.read_text())) if path.exists() else MonitorParams()
        return MonitorParams(scrape_interval=scrape_interval or saved.scrape_interval,
                             alert_for=alert_for or saved.alert_for)

    def exporters(self) -> list[Exporter]:
        layout = self.layout
        nodes = layout.nodes()
        if len(nodes) > POSTGRES_EXPORTER_OFFSET:
            raise TopologyError(
                f"monitoring supports up to {POSTGRES_EXPORTER_OFFSET} PostgreSQL servers per "
                f"topology ({len(nodes)} here); run `up --no-monitoring`")
        folder = self.monitoring_dir
        exporters = [self._postgres_exporter(node, folder) for node in nodes]
        exporters += [
            Exporter("pgbouncer-exporter", layout.base_port + 8, (
                # Debian's exporter, with the columns of Debian's PgBouncer (see the module).
                # Its copy in the monitoring folder: the exporter's user may not be able to
                # enter the checkout (a clone under a private folder), only the topology folder.
                "/usr/bin/python3", str(folder / "pgbouncer_exporter.py"),
                "--host", "127.0.0.1", "--port", str(layout.base_port + 8),
                "--pgbouncer-host", "127.0.0.1", "--pgbouncer-port", str(layout.pgbouncer_port),
                "--pgbouncer-user", ADMIN_USER,
            )),
            Exporter("redis-exporter", layout.base_port + 7, (
                proc.require_binary("prometheus-redis-exporter", "prometheus-redis-exporter"),
                "-redis.addr", f"redis://127.0.0.1:{layout.redis_port}",
                "-web.listen-address", f"127.0.0.1:{layout.base_port + 7}",
            )),
            Exporter("node-exporter", layout.base_port + 6, (
                proc.require_binary("prometheus-node-exporter", "prometheus-node-exporter"),
                f"--web.listen-address=127.0.0.1:{layout.base_port + 6}",
                "--collector.disable-defaults", "--collector.filesystem",
                # Debian's default also drops overlay: a container's root is one, and its disk
                # is the one PostgreSQL fills.
                "--collector.filesystem.fs-types-exclude=^(autofs|binfmt_misc|bpf|cgroup2?|"
                "configfs|debugfs|devpts|devtmpfs|fusectl|hugetlbfs|mqueue|nsfs|proc|procfs|"
                "pstore|rpc_pipefs|securityfs|selinuxfs|squashfs|sysfs|tracefs|tmpfs)$",
            )),
        ]
        return exporters

    def _postgres_exporter(self, node: Node, folder: Path) -> Exporter:
        port = node.port + POSTGRES_EXPORTER_OFFSET
        queries = folder / ("queries-control.yml" if node.alias == CONTROL_ALIAS
                            else "queries.yml")
        dsn = f"postgresql://{ADMIN_USER}@127.0.0.1:{node.port}/{APP_DB}?sslmode=disable"
        return Exporter(
            f"postgres-exporter-{node.alias}", port,
            (proc.require_binary("prometheus-postgres-exporter", "prometheus-postgres-exporter"),
             f"--web.listen-address=127.0.0.1:{port}", f"--extend.query-path={queries}"),
            env=(("DATA_SOURCE_NAME", dsn),),
        )

    # ----- configuration
    def prometheus_config(self, params: MonitorParams) -> dict:
        """prometheus.yml, as JSON (a subset of YAML): every target with the labels the rules
        and the dashboard group by. A server's `role` label is the one it was started with:
        the rules take the live one from what each server reports (`pg_recovery_in_recovery`,
        recorded as `cluster_role:pg_server:info`), since under Patroni roles move."""
        postgres = [
            {"targets": [f"127.0.0.1:{node.port + POSTGRES_EXPORTER_OFFSET}"],
             "labels": {"instance": node.alias, "alias": node.alias, "cluster": node.cluster,
                        "role": node.role}}
            for node in self.layout.nodes()
        ]
        # Each member's Patroni REST API serves /metrics (patroni_primary,
        # patroni_postgres_timeline, ...): no role label, Patroni reports it.
        patroni = [
            {"targets": [f"127.0.0.1:{node.rest_port}"],
             "labels": {"instance": node.alias, "alias": node.alias, "cluster": node.cluster}}
            for node in self.layout.nodes() if node.rest_port is not None
        ]
        apps = [{"targets": [host.upstream], "labels": {"instance": host.name}}
                for host in self.app_hosts()]
        base = self.layout.base_port

        def one(job: str, port: int) -> dict:
            return {"job_name": job,
                    "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                        "labels": {"instance": job}}]}

        return {
            "global": {"scrape_interval": params.scrape_interval,
                       "evaluation_interval": params.scrape_interval,
                       "scrape_timeout": params.scrape_interval},
            "rule_files": [str(self.monitoring_dir / "rules" / "*.yml")],
            "scrape_configs": [
                # /metrics answers the manager's addresses (SHARDSVC_METRICS_ALLOW, set per app
                # host in deploy/edge.py): no token needed from here.
                {"job_name": "shardsvc", "metrics_path": "/metrics", "static_configs": apps},
                {"job_name": "postgres", "static_configs": postgres},
                *([{"job_name": "patroni", "static_configs": patroni}] if patroni else []),
                one("pgbouncer", base + 8),
                one("redis", base + 7),
                one("node", base + 6),
                {"job_name": "prometheus",
                 "static_configs": [{"targets": [f"{self.service_address()}:{base + 9}"],
                                     "labels": {"instance": "prometheus"}}]},
            ],
        }

    def write_monitoring_files(self, params: MonitorParams) -> None:
        folder = proc.make_dir(self.monitoring_dir)
        (folder / "params.json").write_text(json.dumps(
            {"scrape_interval": params.scrape_interval, "alert_for": params.alert_for}))
        queries = (PROMETHEUS_DIR / "queries" / "postgres.yml").read_text()
        (folder / "queries.yml").write_text(queries)
        (folder / "queries-control.yml").write_text(
            queries + "\n" + (PROMETHEUS_DIR / "queries" / "control.yml").read_text())
        (folder / "pgbouncer_exporter.py").write_text(
            (PROJECT_DIR / "deploy" / "pgbouncer_exporter.py").read_text())
        rules = proc.make_dir(folder / "rules")
        for source in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")):
            (rules / source.name).write_text(render_rules(source.read_text(), params.alert_for))
        (folder / "prometheus.yml").write_text(
            json.dumps(self.prometheus_config(params), indent=2) + "\n")
        data = proc.make_dir(folder / "data")
        for path in (folder, rules, data):
            self._chown_to_monitor_user(path)

    def _chown_to_monitor_user(self, path: Path) -> None:
        if os.geteuid() == 0:
            proc.chown_to(path, MONITOR_USER)

    # ----- processes
    def ensure_monitoring(self, params: MonitorParams | None = None) -> None:
        """Write the configuration, start what is not running, reload Prometheus."""
        params = params or self.monitor_params()
        binary = proc.require_binary("prometheus", "prometheus")
        self.write_monitoring_files(params)
        for exporter in self.exporters():
            self._ensure_process(exporter.name, exporter.port, exporter.argv, dict(exporter.env))
        folder = self.monitoring_dir
        pid = proc.read_pid(folder / "prometheus.pid")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)  # reload: new targets and rules
        else:
            self._ensure_process("prometheus", self.prometheus_port, (
                binary,
                f"--config.file={folder / 'prometheus.yml'}",
                f"--storage.tsdb.path={folder / 'data'}",
                "--storage.tsdb.retention.time=7d",
                f"--web.listen-address={self.service_address()}:{self.prometheus_port}",
            ), {}, host=self.service_address())
        self.wait_prometheus_ready()
        self.echo(f"prometheus: {self.prometheus_url()}/ (scrape every {params.scrape_interval}"
                  f"{', alerts for ' + params.alert_for if params.alert_for else ''})")

    def _ensure_process(self, name: str, port: int, argv: Sequence[str], env: dict[str, str],
                        *, host: str = "127.0.0.1") -> None:
        folder = self.monitoring_dir
        pidfile, log = folder / f"{name}.pid", folder / f"{name}.log"
        if proc.read_pid(pidfile) is not None:
            return
        proc.require_free_port(port, name, host=host)
        with log.open("ab") as out:
            child = subprocess.Popen(
                as_monitor_user(argv), cwd=folder, env={**os.environ, **env},
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the caller; `down` stops it by pid file
            )
        pidfile.write_text(f"{child.pid}\n")
        deadline = time.monotonic() + 20
        while not proc.port_in_use(port, host):
            if child.poll() is not None or time.monotonic() > deadline:
                raise TopologyError(f"{name} did not start listening on port {port}"
                                    f"{proc.log_tail(log)}")
            time.sleep(0.05)

    def wait_prometheus_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.prometheus_url()}/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise TopologyError(f"Prometheus was not ready within {timeout:.0f} s"
                            f"{proc.log_tail(self.monitoring_dir / 'prometheus.log')}")

    def monitoring_pidfiles(self) -> list[Path]:
        return sorted(self.monitoring_dir.glob("*.pid")) if self.monitoring_dir.exists() else []

    def stop_monitoring(self) -> bool:
        stopped = False
        for pidfile in self.monitoring_pidfiles():
            stopped = proc.stop_pid(pidfile, timeout=10) or stopped
            pidfile.unlink(missing_ok=True)
        return stopped

    def monitoring_status_rows(self) -> Iterator[dict[str, str]]:
        if not self.monitoring_dir.exists():
            return
        ports = {e.name: e.port for e in self.exporters()}
        ports["prometheus"] = self.prometheus_port
        for name, port in ports.items():
            running = proc.read_pid(self.monitoring_dir / f"{name}.pid") is not None
            yield {"component": "monitoring", "name": name, "port": str(port),
                   "state": "running" if running else "stopped",
                   "detail": f"as {MONITOR_USER}" if os.geteuid() == 0 else ""}


def as_monitor_user(argv: Sequence[str]) -> list[str]:
    """`setpriv` execs the command (same pid, unlike `runuser`), so its pid file names it."""
    if os.geteuid() != 0:
        return list(argv)
    return ["setpriv", f"--reuid={MONITOR_USER}", f"--regid={MONITOR_USER}", "--init-groups",
            "--", *argv]


def render_rules(text: str, alert_for: str | None) -> str:
    """The rules file with every `for:` replaced by `alert_for` (unchanged when None)."""
    if alert_for is None:
        return text
    return re.sub(r"^(\s+)for: \S+$", rf"\g<1>for: {alert_for}", text, flags=re.MULTILINE)
