"""Starting the plain Django baseline (tests/benchmarks/plain_django) beside a topology's
service: Gunicorn in a folder of the topology, so `destroy` stops it with everything else."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from deploy import processes as proc
from deploy.topology import PROJECT_DIR, LocalTopology
from tests.benchmarks.wrk import BenchmarkFailed

CONF = Path(__file__).resolve().parent / "plain_django" / "gunicorn_conf.py"


@dataclass
class PlainServer:
    folder: Path
    port: int
    dsn: str
    max_conns: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        proc.stop_pid(self.folder / "gunicorn.pid", timeout=20)


def start_plain(topology: LocalTopology, *, alias: str, port: int, max_conns: int,
                workers: int) -> PlainServer:
    """The plain project on `alias` (a primary: it also writes) through the topology's
    PgBouncer, with the service's Gunicorn settings (`workers` as the service has them)."""
    folder = proc.make_dir(topology.layout.root / "plain")
    server = PlainServer(folder, port, topology.pooled_dsn(alias), max_conns)
    proc.require_free_port(port, "the plain Django baseline")
    env = dict(os.environ)  # SHARDSVC_* Gunicorn knobs apply to both, as the service reads them
    env.update(
        DJANGO_SETTINGS_MODULE="tests.benchmarks.plain_django.settings",
        PLAIN_DSN=server.dsn,
        PLAIN_MAX_CONNS=str(max_conns),
        # Read by the service's Gunicorn settings, which the plain project's copy.
        SHARDSVC_BIND=f"127.0.0.1:{port}",
        SHARDSVC_WORKERS=str(workers),
        PROMETHEUS_MULTIPROC_DIR=str(proc.make_dir(folder / "metrics")),
        PYTHONPATH=str(PROJECT_DIR),
    )
    with (folder / "gunicorn.log").open("ab") as log:
        subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", str(CONF),
             "--pid", str(folder / "gunicorn.pid"),
             "tests.benchmarks.plain_django.wsgi:application"],
            cwd=PROJECT_DIR, env=env, stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"{server.url}/sites/0/threads/0", timeout=2)
        except urllib.error.HTTPError as answer:
            if answer.code == 404:  # Django answered: up
                return server
        except OSError:
            pass
        time.sleep(0.2)
    raise BenchmarkFailed(f"the plain baseline did not start on port {port}"
                          f"{proc.log_tail(folder / 'gunicorn.log', 40)}")
