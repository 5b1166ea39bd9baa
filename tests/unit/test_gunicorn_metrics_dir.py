"""deploy/gunicorn.conf.py started without PROMETHEUS_MULTIPROC_DIR: the Prometheus folder it
makes for itself is gone once the master exits, however it exits, and a worker's exit does not
take it from the master. Real Gunicorn masters in subprocesses, with a temporary TMPDIR."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parents[2]
CONF = PROJECT_DIR / "deploy" / "gunicorn.conf.py"
APP = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'']\n"


def gunicorn(tmp_path: Path, app: str, **env: str) -> subprocess.Popen[bytes]:
    environ = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    environ.update(TMPDIR=str(tmp_path / "tmp"), SHARDSVC_BIND="127.0.0.1:0",
                   PYTHONPATH=f"{tmp_path}{os.pathsep}{PROJECT_DIR}", **env)
    (tmp_path / "tmp").mkdir()
    return subprocess.Popen([sys.executable, "-m", "gunicorn", "-c", str(CONF), app],
                            cwd=tmp_path, env=environ, stdout=subprocess.DEVNULL,
                            stderr=(tmp_path / "gunicorn.log").open("wb"))


def metrics_dirs(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "tmp").glob("shardsvc-metrics-*"))


def booted_workers(tmp_path: Path) -> list[int]:
    log = (tmp_path / "gunicorn.log").read_text()
    return [int(line.rsplit(" ", 1)[1].rstrip(")")) for line in log.splitlines()
            if "Booting worker with pid" in line]


def wait_for(predicate, what: str, master: subprocess.Popen[bytes], tmp_path: Path) -> None:
    deadline = time.monotonic() + 60
    while not predicate():
        if master.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{what}: not seen\n{(tmp_path / 'gunicorn.log').read_text()}")
        time.sleep(0.05)


def test_a_master_whose_app_fails_to_load_leaves_no_folder(tmp_path: Path) -> None:
    master = gunicorn(tmp_path, "no_such_module_for_this_test:app")
    assert master.wait(timeout=60) != 0
    assert "No module named 'no_such_module_for_this_test'" in (
        tmp_path / "gunicorn.log").read_text()
    assert metrics_dirs(tmp_path) == []


def test_the_folder_outlives_a_worker_and_goes_with_the_master(tmp_path: Path) -> None:
    (tmp_path / "tiny_app.py").write_text(APP)
    master = gunicorn(tmp_path, "tiny_app:app", SHARDSVC_WORKERS="1")
    try:
        wait_for(lambda: booted_workers(tmp_path), "a worker booted", master, tmp_path)
        [folder] = metrics_dirs(tmp_path)
        # A worker that exits (the master starts another) runs the inherited exit handler too.
        first = booted_workers(tmp_path)[0]
        os.kill(first, signal.SIGTERM)
        wait_for(lambda: len(booted_workers(tmp_path)) > 1, "a second worker booted", master,
                 tmp_path)
        assert folder.is_dir()
    finally:
        master.terminate()
        master.wait(timeout=60)
    assert metrics_dirs(tmp_path) == []
