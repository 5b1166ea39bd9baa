"""Settings built from the topology file. Nothing else reads that file."""

from __future__ import annotations

import os
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from shards.topology import databases_setting, load_shard_map

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ImproperlyConfigured(f"{name} must be positive, got {raw!r}")
    return value


SHARD_MAP = load_shard_map(os.environ.get("SHARDSVC_TOPOLOGY", BASE_DIR / ".var" / "topology.toml"))

SECRET_KEY = os.environ.get("SHARDSVC_SECRET_KEY", "insecure-local-topology-key-change-me")
DEBUG = os.environ.get("SHARDSVC_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("SHARDSVC_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# Per database alias, per worker process: the pool's hard cap and how long a request waits
# for a connection before it gets a 503.
DB_POOL_MAX_CONNS = int(_env_float("SHARDSVC_POOL_MAX_CONNS", 20))
DB_POOL_TIMEOUT = _env_float("SHARDSVC_POOL_TIMEOUT", 5.0)

# Admin processes (DDL, moves) may bypass PgBouncer; the service never does.
DIRECT_DB = os.environ.get("SHARDSVC_DIRECT_DB") == "1"
DATABASES = databases_setting(
    SHARD_MAP,
    options={
        "MAX_CONNS": DB_POOL_MAX_CONNS,
        "POOL_TIMEOUT": DB_POOL_TIMEOUT,
        "POOLER": "direct" if DIRECT_DB else "pgbouncer-transaction",
        "connect_timeout": 5,
    },
    use_direct=DIRECT_DB,
)
for _entry in DATABASES.values():
    # Held server-side cursors (.iterator()) are session state: PgBouncer's transaction
    # pooling would hand them to other clients.
    _entry["DISABLE_SERVER_SIDE_CURSORS"] = True

# Redis is a cache here, never a single point of failure (shards/redisguard.py): every command
# has a short timeout, and after REDIS_BREAKER_FAILURES consecutive failures a worker skips Redis
# for REDIS_BREAKER_RESET seconds, then probes it with one background PING. Cache reads that fail
# are misses (IGNORE_EXCEPTIONS), so requests read the database instead.
REDIS_TIMEOUT = _env_float("SHARDSVC_REDIS_TIMEOUT", 0.05)
REDIS_BREAKER_FAILURES = int(_env_float("SHARDSVC_REDIS_BREAKER_FAILURES", 3))
REDIS_BREAKER_RESET = _env_float("SHARDSVC_REDIS_BREAKER_RESET", 1.0)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": SHARD_MAP.redis_url,
        "KEY_PREFIX": "shardsvc",
        "OPTIONS": {
            "REDIS_CLIENT_CLASS": "shards.redisguard.GuardedRedis",
            "IGNORE_EXCEPTIONS": True,
            # redis-py's default pool raises past 100 connections under gevent load; a blocking
            # pool makes callers wait (bounded by REDIS_TIMEOUT) instead.
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {"max_connections": 200, "timeout": REDIS_TIMEOUT},
            "SOCKET_CONNECT_TIMEOUT": REDIS_TIMEOUT,
            "SOCKET_TIMEOUT": REDIS_TIMEOUT,
        },
    }
}

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "shards",
    "sites",
    "comments",
    "migrations_tools",
]

# Apps whose models live on the shards (ShardedModel); every other app lives on `default`.
SHARDED_APPS = ["comments"]
DATABASE_ROUTERS = ["routers.router.ShardRouter"]

# Replicas lagging more than this (seconds) are skipped; checked every REPLICA_CHECK_INTERVAL.
REPLICA_MAX_LAG = _env_float("SHARDSVC_REPLICA_MAX_LAG", 5.0)
REPLICA_CHECK_INTERVAL = _env_float("SHARDSVC_REPLICA_CHECK_INTERVAL", 0.5)
# Tenant directory caches: per worker (seconds) and in Redis (seconds).
DIRECTORY_LOCAL_TTL = _env_float("SHARDSVC_DIRECTORY_LOCAL_TTL", 1.0)
DIRECTORY_REDIS_TTL = int(_env_float("SHARDSVC_DIRECTORY_REDIS_TTL", 30))
PLACEMENT_POLICY = "shards.placement.least_loaded"
# Where a request names its tenant, tried in order: "path", "header", "host".
TENANT_SOURCES = ["path", "header"]
TENANT_PATH_PATTERN = r"^/(?:t|api/sites)/(?P<tenant>[^/]+)/"
TENANT_HEADER = "X-Tenant"

MIDDLEWARE = [
    # Outermost: request id and access log, then request metrics (both see every answer).
    "project.request_log.RequestLogMiddleware",
    "project.metrics.MetricsMiddleware",
    "routers.middleware.CausalConsistencyMiddleware",
    "project.middleware.DatabaseUnavailableMiddleware",
    "project.limits.RequestSizeLimitMiddleware",
    "routers.middleware.TenantMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "project.urls"
WSGI_APPLICATION = "project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

# Admin sessions live in the control database: a Redis outage or restart (it keeps no data) must
# not log anyone out, and a logout must not linger in a cache Redis could not be told about.
SESSION_ENGINE = "django.contrib.sessions.backends.db"
# Messages ride in the session, not a cookie: a rotated API key is shown once that way.
MESSAGE_STORAGE = "django.contrib.messages.storage.session.SessionStorage"
USE_TZ = True
TIME_ZONE = "UTC"
LANGUAGE_CODE = "en-us"
USE_I18N = False
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The ops API (create and list sites) answers only to this token; unset, it answers no one.
OPS_TOKEN = os.environ.get("SHARDSVC_OPS_TOKEN", "")
# A write that hits a moving tenant's fence waits (retrying) this long for the move to flip.
FENCE_RETRY_SECONDS = _env_float("SHARDSVC_FENCE_RETRY_SECONDS", 10.0)
# Bodies past this size get a 413 before they are read.
MAX_REQUEST_BYTES = 64 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

# Endpoints that let the test suite drive the pool (slow queries on a chosen alias). Off unless
# the harness turns them on: they would let anyone hold database connections.
DIAGNOSTICS_ENABLED = os.environ.get("SHARDSVC_DIAGNOSTICS") == "1"

# JSON lines on stderr, each carrying the request id, site and shard of the request it belongs to
# (project/request_log.py). SHARDSVC_LOG_FORMAT=plain for a human-readable console.
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"request_context": {"()": "project.request_log.RequestContextFilter"}},
    "formatters": {
        "json": {"()": "project.request_log.JsonFormatter"},
        "plain": {
            "format": "%(asctime)s %(levelname)s %(name)s [%(request_id)s %(site)s] %(message)s"
        },
    },
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "filters": ["request_context"],
            "formatter": "plain" if os.environ.get("SHARDSVC_LOG_FORMAT") == "plain" else "json",
        }
    },
    "root": {
        "handlers": ["console"],
        "level": os.environ.get("SHARDSVC_LOG_LEVEL", "INFO").upper(),
    },
}
