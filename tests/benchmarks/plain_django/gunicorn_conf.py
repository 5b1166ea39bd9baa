"""Gunicorn settings of the plain baseline: the service's own (deploy/gunicorn.conf.py, read
from that file so the two never drift apart: workers, worker connections, keep-alive, preload,
accept balancing, ...), with Gunicorn's stock gevent worker and none of the service's hooks."""

# As in the service's config: patch before anything imports socket, ssl or threading.
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import runpy  # noqa: E402
from pathlib import Path  # noqa: E402

from gunicorn.config import KNOWN_SETTINGS  # noqa: E402

_SERVICE_CONF = Path(__file__).resolve().parents[3] / "deploy" / "gunicorn.conf.py"
# Not copied: what names the process or the worker class, logs, and every hook (callables).
_OWN = {"worker_class", "proc_name", "accesslog", "errorlog", "loglevel", "pidfile"}
_names = {setting.name for setting in KNOWN_SETTINGS} - _OWN
for _name, _value in runpy.run_path(str(_SERVICE_CONF)).items():
    if _name in _names and not callable(_value):
        globals()[_name] = _value

worker_class = "gevent"
proc_name = "plain-django"
errorlog = "-"
loglevel = os.environ.get("PLAIN_LOG_LEVEL", "warning")
