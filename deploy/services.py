"""The service of the local topology: Gunicorn processes, their environment and secrets.

`ServiceControl` is part of LocalTopology (it needs its layout); `ServiceProcess` is one running
Gunicorn master, found again by its folder.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from deploy import processes as proc
from deploy.layout import PROJECT_DIR, LocalLayout
from deploy.processes import TopologyError


class ServiceControl:
    """Starting the service and running management commands against a LocalLayout."""

    layout: LocalLayout
    echo: Callable[[str], None]
    monitoring_env: Callable[[], dict[str, str]]

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
        # Where the ops dashboard finds Prometheus (deploy/monitoring.py).
        env.update(self.monitoring_env())
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

    def migrate(self, **env: str) -> None:
        # migrate_shards migrates control first (shards take their global id generator from its
        # registry), then every shard primary in parallel, over direct connections, under the
        # cluster lock; it exits non-zero (TopologyError here) unless everything is migrated.
        self.echo("migrating control and shards (manage.py migrate_shards)")
        output = self.manage("migrate_shards", **env)
        # The summary table: a header, one row per database, and the timing line.
        for line in output.splitlines()[-(len(self.layout.cluster_names) + 2):]:
            self.echo(line)

    def start_service(
        self, *, name: str = "service", port: int | None = None, host: str = "127.0.0.1",
        prefix: Sequence[str] = (), **env: str
    ) -> ServiceProcess:
        """Start a Gunicorn master on host:port and wait until it answers /healthz. `prefix`
        runs it inside something (`ip netns exec <namespace>` for an app host)."""
        port = port or self.layout.http_port
        folder = proc.make_dir(self.layout.root / name)
        service = ServiceProcess(folder=folder, port=port, host=host)
        if service.running():
            return service
        (folder / "port").write_text(f"{port}\n")
        (folder / "host").write_text(f"{host}\n")
        (folder / "env.json").write_text(json.dumps(env))  # for rolling restarts (edge.py)
        (folder / "prefix.json").write_text(json.dumps(list(prefix)))
        proc.require_free_port(port, f"the service ({name})", host=host)
        env.setdefault("SHARDSVC_BIND", f"{host}:{port}")
        # Prometheus multiprocess files of this service's workers, emptied before it starts:
        # files of an earlier run would add their counts to this one's.
        metrics_dir = Path(env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(folder / "metrics")))
        shutil.rmtree(metrics_dir, ignore_errors=True)
        metrics_dir.mkdir(parents=True)
        service_env = self.service_env(**env)
        with (folder / "gunicorn.log").open("ab") as log:
            subprocess.Popen(
                [
                    *prefix,
                    sys.executable, "-m", "gunicorn",
                    "-c", str(PROJECT_DIR / "deploy" / "gunicorn.conf.py"),
                    "--pid", str(service.pidfile),
                    "project.wsgi:application",
                ],
                cwd=PROJECT_DIR,
                env=service_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # survives the caller; `down` stops it by pid file
            )
        service.wait_ready(timeout=60, workers=int(service_env["SHARDSVC_WORKERS"]))
        self.echo(f"service: {service.url}/ (log {folder / 'gunicorn.log'})")
        return service


@dataclass
class ServiceProcess:
    """A Gunicorn master started by LocalTopology.start_service."""

    folder: Path
    port: int
    host: str = "127.0.0.1"

    @property
    def pidfile(self) -> Path:
        return self.folder / "gunicorn.pid"

    @property
    def log(self) -> Path:
        return self.folder / "gunicorn.log"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def running(self) -> bool:
        return proc.read_pid(self.pidfile) is not None

    @classmethod
    def in_folder(cls, folder: Path) -> ServiceProcess:
        port_file, host_file = folder / "port", folder / "host"
        return cls(
            folder=folder,
            port=int(port_file.read_text()) if port_file.exists() else 0,
            host=host_file.read_text().strip() if host_file.exists() else "127.0.0.1",
        )

    def start_settings(self) -> tuple[dict[str, str], list[str]]:
        """The environment and prefix it was started with, to start it again the same way."""
        env_file, prefix_file = self.folder / "env.json", self.folder / "prefix.json"
        env = json.loads(env_file.read_text()) if env_file.exists() else {}
        prefix = json.loads(prefix_file.read_text()) if prefix_file.exists() else []
        return env, prefix

    def ready(self) -> bool:
        """/readyz answers 200: this host can serve (its pool reaches the directory)."""
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=5) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, *, timeout: float, workers: int = 1) -> None:
        """Until /healthz answers and the master has forked `workers` workers: Gunicorn forks
        them one after another, with a random pause of up to 0.1 s between two, and the first
        may answer before the last exists."""
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                    forked = len(self.worker_pids())
                    if response.status == 200 and forked >= workers:
                        return
                    last_error = f"{forked} of {workers} workers forked"
            except OSError as exc:
                last_error = str(exc)
            time.sleep(0.1)
        raise TopologyError(
            f"the service did not answer /healthz on port {self.port} within {timeout:.0f} s "
            f"({last_error}){proc.log_tail(self.log, 40)}"
        )

    def worker_pids(self) -> list[int]:
        """The Gunicorn master's children: its workers."""
        master = proc.read_pid(self.pidfile)
        return [] if master is None else proc.children(master)

    def stop(self) -> None:
        proc.stop_pid(self.pidfile, timeout=20)
