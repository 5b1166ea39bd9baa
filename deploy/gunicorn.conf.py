"""Gunicorn settings for the service: gevent workers, configured from the environment."""

# Patch before anything else imports socket, ssl or threading: with preload_app, a late patch
# leaves Django's connection objects bound to the real thread and every request fails with
# "DatabaseWrapper objects created in a thread can only be used in that same thread".
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402

bind = os.environ.get("SHARDSVC_BIND", "127.0.0.1:8000")
workers = int(os.environ.get("SHARDSVC_WORKERS", "2"))
worker_class = "gevent"
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


def worker_exit(server, worker):
    # Close pooled connections so PgBouncer does not keep dead clients around.
    from project.pgpool.pool import close_all_pools

    close_all_pools()
