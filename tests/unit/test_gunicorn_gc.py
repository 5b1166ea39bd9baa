"""deploy/gunicorn.conf.py freezes what the master loaded before it forks a worker: a real
Gunicorn master with a tiny app (loaded in the master: preload_app) that writes, in each forked
child, how many objects its collector holds frozen."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.unit.test_gunicorn_metrics_dir import CONF, PROJECT_DIR

APP = (
    "import gc, os\n"
    "loaded = [object() for _ in range(1000)]\n"
    "def _note():\n"
    "    with open(os.environ['FROZEN_FILE'], 'w') as f:\n"
    "        f.write(str(gc.get_freeze_count()))\n"
    "os.register_at_fork(after_in_child=_note)\n"
    "def app(environ, start_response):\n"
    "    start_response('200 OK', [])\n"
    "    return [b'']\n"
)


def test_a_worker_starts_with_the_masters_objects_frozen(tmp_path: Path) -> None:
    (tmp_path / "frozen_app.py").write_text(APP)
    (tmp_path / "metrics").mkdir()
    frozen_file = tmp_path / "frozen"
    environ = {**os.environ, "SHARDSVC_BIND": "127.0.0.1:0", "SHARDSVC_WORKERS": "1",
               "SHARDSVC_PRELOAD": "1", "FROZEN_FILE": str(frozen_file),
               "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
               "PYTHONPATH": f"{tmp_path}{os.pathsep}{PROJECT_DIR}"}
    master = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", str(CONF), "frozen_app:app"], cwd=tmp_path,
        env=environ, stdout=subprocess.DEVNULL, stderr=(tmp_path / "gunicorn.log").open("wb"))
    try:
        deadline = time.monotonic() + 60
        while not (frozen_file.exists() and frozen_file.read_text()):
            assert master.poll() is None, (tmp_path / "gunicorn.log").read_text()
            assert time.monotonic() < deadline, "no worker was forked"
            time.sleep(0.1)
        # The app module's objects, and everything else the master had made.
        assert int(frozen_file.read_text()) > 1000
    finally:
        master.terminate()
        master.wait(timeout=30)
