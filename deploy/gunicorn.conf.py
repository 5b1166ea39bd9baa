"""Gunicorn settings for the service: gevent workers, configured from the environment."""

# Patch before anything else imports socket, ssl or threading: with preload_app, a late patch
# leaves Django's connection objects bound to the real thread and every request fails with
# "DatabaseWrapper objects created in a thread can only be used in that same thread".
from gevent import monkey

monkey.patch_all()

import atexit  # noqa: E402
import gc  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

from deploy.accept_balance import AcceptBalance  # noqa: E402


def _remove_own_metrics_dir(path: str, owner: int) -> None:
    # Forked workers inherit this handler and run it when they exit: only the process that
    # made the folder (the master, or whatever read this file) removes it.
    if os.getpid() == owner:
        shutil.rmtree(path, ignore_errors=True)


# Prometheus multiprocess mode: every worker writes its samples to files in this folder and
# /metrics merges them. It must be set before prometheus_client is imported (the app, below) and
# be empty when the service starts: `deploy.topology` gives each service folder its own and
# empties it. Started some other way, the service gets a fresh folder, removed when the process
# that made it exits: at interpreter exit rather than in Gunicorn's on_exit, which a master whose
# app failed to load (preload_app) never reaches, nor a process that only reads this file.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _own_metrics_dir = tempfile.mkdtemp(prefix="shardsvc-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = _own_metrics_dir
    atexit.register(_remove_own_metrics_dir, _own_metrics_dir, os.getpid())

bind = os.environ.get("SHARDSVC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHARDSVC_WORKERS", "2"))
# gevent, with Gunicorn's own 400/414/431 answers in the API's JSON error shape.
worker_class = "deploy.gunicorn_worker.JsonErrorGeventWorker"
# Concurrent requests per worker; each database alias is further capped by MAX_CONNS.
worker_connections = int(os.environ.get("SHARDSVC_WORKER_CONNECTIONS", "1000"))
timeout = int(os.environ.get("SHARDSVC_TIMEOUT", "30"))
graceful_timeout = 20
keepalive = 5
preload_app = os.environ.get("SHARDSVC_PRELOAD", "1") == "1"
# gunicorn 27 opens a control socket by default; the service has no use for it.
control_socket_disable = True
accesslog = os.environ.get("SHARDSVC_ACCESS_LOG") or None
errorlog = "-"
loglevel = os.environ.get("SHARDSVC_LOG_LEVEL", "info")
proc_name = "shardsvc"


# Shared by the master and the workers it forks: keep-alive connections evened out between
# workers (deploy/accept_balance.py).
_accept_balance = AcceptBalance()


def pre_fork(server, worker):
    # What the master built loading the app (preload_app) lives as long as the worker: frozen,
    # the worker's full collections skip it (and leave those pages shared with the master).
    # Measured under wrk at 64 connections: a worker's gen-2 collections paused it 47-52 ms
    # (median; up to 74), every request in flight waiting; 6-7 ms frozen.
    gc.freeze()
    worker.accept_balance = _accept_balance
    worker.accept_slot = _accept_balance.claim()


def post_worker_init(worker):
    # Imported here: this file is read before the app is loaded (and must patch first).
    from project.wsgi import lean_request_signals

    lean_request_signals()


def worker_exit(server, worker):
    # Close pooled connections so PgBouncer does not keep dead clients around.
    from project.pgpool import close_all_pools

    close_all_pools()


def child_exit(server, worker):
    # Runs in the master: drop the dead worker's live gauges (pool use, replica lag) so they no
    # longer count; its counters stay, so totals never go backwards.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
    _accept_balance.release(getattr(worker, "accept_slot", None))
