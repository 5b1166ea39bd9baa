"""A Django database backend: ``ENGINE = "project.pgpool"``.

django-db-geventpool's psycopg 3 backend with a hard-capped, fair, leak-proof pool. OPTIONS keys
(all optional): ``MAX_CONNS`` (10), ``REUSE_CONNS`` (MAX_CONNS), ``POOL_TIMEOUT`` (5.0 s),
``CHECK_IDLE_AFTER`` (30.0 s), ``POOLER`` (None, or "direct", "pgbouncer-session",
"pgbouncer-transaction"), ``STATEMENT_TIMEOUT`` and ``LOCK_TIMEOUT`` (0 s: none; set per
transaction with SET LOCAL, see ``timeouts.py``). ``deadline.py`` bounds the database waits of a
block of code (a request). Call ``close_all_pools()`` at worker exit; read ``pool_stats()`` and
``timeout_counts()`` for metrics.
"""

from .counters import timeout_counts
from .errors import PoolTimeout
from .pool import PoolKey, PoolStats
from .registry import close_all_pools, pool_stats

__all__ = ["PoolKey", "PoolStats", "PoolTimeout", "close_all_pools", "pool_stats",
           "timeout_counts"]
