"""Settings built from the topology file. Nothing else reads that file."""

from __future__ import annotations

import ipaddress
import math
import os
import re
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

from shards.runtime import environ_overrides
from shards.topology import RoleOptions, databases_setting, load_shard_map

BASE_DIR = Path(__file__).resolve().parent.parent


def _env_float(name: str, default: float, *, allow_zero: bool = False) -> float:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name}={raw!r} is not a number") from None
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = "0 (off) or more" if allow_zero else "positive"
        raise ImproperlyConfigured(f"{name} must be {bound}, got {raw!r}")
    return value


def _env_networks(name: str, default: str, *,
                  example: str) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """A comma-separated list of networks in CIDR form from the environment."""
    try:
        return [ipaddress.ip_network(net.strip())
                for net in os.environ.get(name, default).split(",") if net.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(
            f"{name}: {exc} (give networks in CIDR form, comma-separated, e.g. {example})"
        ) from None


def _env_rate(name: str, default: str) -> str | None:
    """A django-ratelimit rate such as "20/m" or "5/15m"; "off" (or "0") turns the limit off."""
    raw = os.environ.get(name, default).strip()
    if raw in ("off", "0"):
        return None
    if not re.fullmatch(r"[1-9][0-9]*/([1-9][0-9]*)?[smhd]", raw):
        raise ImproperlyConfigured(
            f"{name}={raw!r} is not a rate: write count/period, e.g. 20/m or 5/15m "
            "(s, m, h, d), or off"
        )
    return raw


_shard_map_path = os.environ.get("SHARDSVC_TOPOLOGY", BASE_DIR / ".var" / "topology.toml")
_shard_map = load_shard_map(_shard_map_path)

DEBUG = os.environ.get("SHARDSVC_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("SHARDSVC_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

# ----- security -------------------------------------------------------------------------------
# The secret signs user tokens, causal tokens and admin sessions: a default one would let anyone
# who reads this file sign identities. Only an explicit development run may go without one.
SECRET_KEY = os.environ.get("SHARDSVC_SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured(
            "SHARDSVC_SECRET_KEY is not set. Generate one with "
            "`python3 -c 'import secrets; print(secrets.token_urlsafe(48))'` and pass it to every "
            "process of the service (the local topology keeps its own in secret-key next to "
            "topology.toml: export SHARDSVC_SECRET_KEY=\"$(cat .var/secret-key)\"), or set "
            "SHARDSVC_DEBUG=1 for a development run with a throwaway key."
        )
    SECRET_KEY = "development-only-" + secrets.token_urlsafe(48)
# Earlier keys, newest first, still accepted when checking signatures (never used to sign): a
# rotation puts the old key here, so tokens and sessions signed with it keep working until
# they expire or the old key is dropped. See README "Secrets and key rotation".
SECRET_KEY_FALLBACKS = [
    key.strip() for key in os.environ.get("SHARDSVC_SECRET_KEY_FALLBACKS", "").split(",")
    if key.strip()
]

# Clients reach the service over HTTPS: TLS in front of it (a terminating proxy that sets
# X-Forwarded-Proto, overwriting what the client sent) or in Gunicorn itself. The local
# topology speaks plain HTTP on loopback and sets SHARDSVC_HTTPS=0.
HTTPS = os.environ.get("SHARDSVC_HTTPS", "1") != "0"
if HTTPS:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    SECURE_SSL_REDIRECT = True
    # Probes and Prometheus talk to each host directly, inside the network, in plain HTTP.
    SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz(/shards)?$", r"^metrics$"]
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = int(_env_float("SHARDSVC_HSTS_SECONDS", 365 * 86400))
X_FRAME_OPTIONS = "DENY"
# Content-Security-Policy of HTML pages (project/csp.py): the admin and the API docs (Swagger UI
# from ninja's own static files, started by a script file, no inline code) need nothing but
# their own scripts and styles; Swagger UI sets style attributes from its script.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
CONTENT_SECURITY_POLICY_BY_PATH = {
    "/api/docs": (
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; "
        "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}
SILENCED_SYSTEM_CHECKS = [
    # HSTS for every subdomain (W005) and preloading into browsers (W021) bind the whole parent
    # domain, for a year or for good: that is for whoever owns the domain to decide (at the
    # proxy), not for one service on it. This service's own host still gets HSTS.
    "security.W005",
    "security.W021",
]

# /metrics answers only to these networks (the client's address, REMOTE_ADDR: the peer, or who
# a trusted proxy says the client is, see TRUSTED_PROXIES) or to a request carrying
# "Authorization: Bearer <SHARDSVC_METRICS_TOKEN>" (Prometheus's `authorization` setting).
METRICS_ALLOW = _env_networks("SHARDSVC_METRICS_ALLOW", "127.0.0.0/8,::1/128",
                              example="127.0.0.0/8,10.0.0.0/8")
METRICS_TOKEN = os.environ.get("SHARDSVC_METRICS_TOKEN", "")
# Prometheus's HTTP API, for the ops dashboard's charts and alerts (deploy/monitoring.py sets it).
PROMETHEUS_URL = os.environ.get("SHARDSVC_PROMETHEUS_URL", "").rstrip("/")
# Reverse proxies (nginx) whose X-Real-IP names the client (project/proxy.py): only a request
# whose peer is in these networks has REMOTE_ADDR replaced, so nobody else can claim an address
# on the /metrics allow-list or dodge a per-address throttle. Empty: no proxy is trusted.
TRUSTED_PROXIES = _env_networks("SHARDSVC_TRUSTED_PROXIES", "", example="10.91.0.1/32")

# Per database alias, per worker process: the pool's hard cap and how long a request waits
# for a connection before it gets a 503. A gevent worker serves as many requests waiting on a
# database at once as its cap: 40 lets two workers keep 80 waits in flight (1,600 req/s at
# 50 ms a query), and 2 x 40 stays below PgBouncer's default_pool_size (90, deploy/
# pgbouncer.ini.template), so the waits are never queued in PgBouncer instead.
DB_POOL_MAX_CONNS = int(_env_float("SHARDSVC_POOL_MAX_CONNS", 40))
# A primary's aliases (every cluster's, the control database's too) get a lower cap, at most
# the one above: a worker starts at most this many transactions on one primary at once, and the
# requests past it wait in the pool's queue, in order. A comment write is two messages in one
# transaction (comments/new_comment.py), so it needs two turns of its worker's loop; with every
# request of the worker inside a transaction at once, each turn is shared by all of them and
# every write finishes late. Measured at 64 connections writing comments on one primary (both
# caps in one run, alternating, 2 workers): 540-698 writes/s at cap 40 and 578-722 at 16, p99
# 253-270 ms -> 171-214 ms; PostgreSQL was no busier either way (pg_stat_activity sampled:
# 0.3 backends active on average, and 21 against 12 idle in transaction, waiting for their
# worker's next message). Replicas keep the higher cap: a read is one message, and reads from a
# slow database need the room (the 50 ms case above). A shard without replicas reads from its
# primary, under this cap: raise it for a primary far away (16 per worker at 50 ms a query
# is at most 320 queries/s per worker). After a switchover the writes held meanwhile drain
# through this cap too: bench_failover's switchover pause p99 was 2.96-3.78 s at 16 against
# 2.96-3.18 s at 40 (3 and 2 runs, reads 220-497/s against 284-406/s: within the runs' spread).
DB_POOL_MAX_CONNS_PRIMARY = min(DB_POOL_MAX_CONNS,
                                int(_env_float("SHARDSVC_POOL_MAX_CONNS_PRIMARY", 16)))
# OPTIONS by server role, over the common ones below (shards.topology.databases_setting; also
# for servers added while the service runs, shards.live_topology).
DATABASE_ROLE_OPTIONS: RoleOptions = {
    "primary": {"MAX_CONNS": DB_POOL_MAX_CONNS_PRIMARY},
    "replica": {"MAX_CONNS": DB_POOL_MAX_CONNS},
}
DB_POOL_TIMEOUT = _env_float("SHARDSVC_POOL_TIMEOUT", 5.0)

# Server-side bounds on every query of the service (seconds, 0 = none), set with SET LOCAL in
# each transaction because session settings do not survive PgBouncer's transaction pooling
# (project/pgpool/timeouts.py). A query past them fails and the request gets a 503.
DB_STATEMENT_TIMEOUT = _env_float("SHARDSVC_DB_STATEMENT_TIMEOUT", 5.0, allow_zero=True)
DB_LOCK_TIMEOUT = _env_float("SHARDSVC_DB_LOCK_TIMEOUT", 2.0, allow_zero=True)
# Client-side bounds, for a server or pooler that stops answering: opening a connection (libpq's
# connect_timeout, whole seconds, at least 2), unacknowledged data (tcp_user_timeout), a silent
# peer (keepalives), and the whole request (REQUEST_DEADLINE, project/deadline.py: a paused
# PgBouncer still acknowledges packets, so only the deadline ends those waits). Keep it below
# Gunicorn's 30 s worker timeout.
DB_CONNECT_TIMEOUT = max(2, round(_env_float("SHARDSVC_DB_CONNECT_TIMEOUT", 3.0)))
REQUEST_DEADLINE = _env_float("SHARDSVC_REQUEST_DEADLINE", 10.0, allow_zero=True)

# Admin processes (DDL, moves) may bypass PgBouncer; the service never does.
DIRECT_DB = os.environ.get("SHARDSVC_DIRECT_DB") == "1"
DATABASES = databases_setting(
    _shard_map,
    options={
        "MAX_CONNS": DB_POOL_MAX_CONNS,
        "POOL_TIMEOUT": DB_POOL_TIMEOUT,
        "POOLER": "direct" if DIRECT_DB else "pgbouncer-transaction",
        "STATEMENT_TIMEOUT": DB_STATEMENT_TIMEOUT,
        "LOCK_TIMEOUT": DB_LOCK_TIMEOUT,
        "connect_timeout": DB_CONNECT_TIMEOUT,
        "tcp_user_timeout": 10_000,  # ms: sent data unacknowledged this long breaks the link
        "keepalives": 1,
        "keepalives_idle": 30,
        "keepalives_interval": 10,
        "keepalives_count": 3,
    },
    role_options=DATABASE_ROLE_OPTIONS,
    use_direct=DIRECT_DB,
)
for _entry in DATABASES.values():
    # Held server-side cursors (.iterator()) are session state: PgBouncer's transaction
    # pooling would hand them to other clients.
    _entry["DISABLE_SERVER_SIDE_CURSORS"] = True

# Redis is a cache here, never a single point of failure (shards/redisguard.py): every command
# has a short timeout, and after SHARDSVC["REDIS_BREAKER_FAILURES"] consecutive failures a worker
# skips Redis for SHARDSVC["REDIS_BREAKER_RESET"] seconds, then probes it with one background
# PING. Cache reads that fail are misses (IGNORE_EXCEPTIONS), so requests read the database.
REDIS_TIMEOUT = _env_float("SHARDSVC_REDIS_TIMEOUT", 0.05)
CACHES = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        "LOCATION": _shard_map.redis_url,
        "KEY_PREFIX": "shardsvc",
        "OPTIONS": {
            "REDIS_CLIENT_CLASS": "shards.redisguard.GuardedRedis",
            "IGNORE_EXCEPTIONS": True,
            # redis-py's default pool raises past 100 connections under gevent load; a blocking
            # pool makes callers wait (bounded by REDIS_TIMEOUT) instead.
            "CONNECTION_POOL_CLASS": "redis.BlockingConnectionPool",
            "CONNECTION_POOL_KWARGS": {"max_connections": 200, "timeout": REDIS_TIMEOUT},
            # hiredis, with a readiness check that does not go through gevent's loop.
            "PARSER_CLASS": "shards.redis_parser.ReadyCheckParser",
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
    # Only for its static files and templates: Swagger UI served from here, not a CDN.
    "ninja",
    "corsheaders",
    "shards",
    "routers",
    "sites",
    "comments",
    "migrations_tools",
]

DATABASE_ROUTERS = ["routers.router.ShardRouter"]

# The service's own runtime settings (shards/runtime.py, where each key and its default is
# described): the topology, the apps whose models live on the shards, and what the environment
# sets (SHARDSVC_REPLICA_MAX_LAG, SHARDSVC_DIRECTORY_LOCAL_TTL, ...). Everything else keeps
# its default.
SHARDSVC = {
    "SHARD_MAP": _shard_map,
    "SHARDED_APPS": ["comments"],
    **environ_overrides(os.environ),
}
# Where a request names its tenant, tried in order: "path", "header", "host".
TENANT_SOURCES = ["path", "header"]
TENANT_PATH_PATTERN = r"^/api/sites/(?P<tenant>[^/]+)/"
TENANT_HEADER = "X-Tenant"
# "host" in TENANT_SOURCES: <slug><suffix>, e.g. ".comments.example.com"
TENANT_HOST_SUFFIX: str | None = None

MIDDLEWARE = [
    # First: every later layer (logs, throttles, /metrics) sees the client behind the proxy.
    "project.proxy.TrustedProxyMiddleware",
    # Then request id and access log, then request metrics (both see every answer).
    "project.request_log.RequestLogMiddleware",
    "project.metrics.MetricsMiddleware",
    # Inside the two above, so the 503 of a request past its deadline is logged and counted.
    "project.deadline.RequestDeadlineMiddleware",
    # Refuses oversized requests before a tenant is looked up.
    "project.limits.RequestSizeLimitMiddleware",
    # Causal tokens, the tenant, database unavailability: the request's routing, in that order.
    "project.middleware.RoutingMiddleware",
    # After routing: which origins may call is per site (sites/cors.py), and a preflight names
    # its site only by the path, which the routing middleware has resolved.
    # django-cors-headers' middleware, with a short way through for calls without an Origin.
    "sites.cors.SiteCorsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "project.csp.ContentSecurityPolicyMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

# Left out of the stack that serves the JSON API (project/wsgi.py): it authenticates by header and
# sets no cookie. The admin, and every other path, runs the whole MIDDLEWARE above.
API_PATH_PREFIX = "/api/"
BROWSER_ONLY_MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

# Test hook: the test harness sets SHARDSVC_URLCONF=tests.urls, the service's URLconf plus
# test-only diagnostics endpoints. Production leaves it unset.
ROOT_URLCONF = os.environ.get("SHARDSVC_URLCONF", "project.urls")
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
# `collectstatic` (run by `deploy.topology up`) copies every app's files here under names that
# carry a hash of their content, which nginx serves as immutable; the manifest maps the names.
# The default is next to the topology file, so each topology has its own.
STATIC_ROOT = Path(os.environ.get("SHARDSVC_STATIC_ROOT")
                   or Path(_shard_map_path).resolve().parent / "static")
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.ManifestStaticFilesStorage"
    },
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# The ops API (create and list sites) answers only to this token; unset, it answers no one.
OPS_TOKEN = os.environ.get("SHARDSVC_OPS_TOKEN", "")
# CORS (django-cors-headers) on the site API only, for each site's allowed origins (sites/cors.py
# decides per request; no global list). No credentials: the widget sends its keys and causal
# token in headers, never cookies (third-party cookies are blocked anyway).
CORS_URLS_REGEX = r"^/api/sites/"
CORS_ALLOW_HEADERS = ("accept", "content-type", "x-api-key", "x-user-token", "x-causal-token")
CORS_ALLOW_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
CORS_EXPOSE_HEADERS = ("X-Causal-Token", "Retry-After", "X-Request-Id")
# Browsers keep a preflight's answer this long (Chromium caps it at 2 h): one preflight per page
# and endpoint shape, not one per call.
CORS_PREFLIGHT_MAX_AGE = 7200
# Throttles (sites/throttle.py), counted in Redis so all workers and hosts share them.
# Off altogether with SHARDSVC_THROTTLE=0, one by one with the value "off".
RATELIMIT_ENABLE = os.environ.get("SHARDSVC_THROTTLE", "1") != "0"
# Counters fail open: a Redis outage must not lock every site out (django-ratelimit's own
# default is to refuse when its cache fails).
RATELIMIT_FAIL_OPEN = True
# Failed API key, user token and ops token checks per client address (REMOTE_ADDR, which
# project/proxy.py sets from a trusted proxy's X-Real-IP; IPv6 addresses count per /64).
THROTTLE_AUTH_FAILURES = _env_rate("SHARDSVC_THROTTLE_AUTH_FAILURES", "20/m")
# Writes (post, edit, delete, vote) per end user of a site.
THROTTLE_WRITES = _env_rate("SHARDSVC_THROTTLE_WRITES", "60/m")
# Failed admin logins, per client address and per username.
THROTTLE_ADMIN_LOGIN = _env_rate("SHARDSVC_THROTTLE_ADMIN_LOGIN", "5/15m")
# Bodies past this size get a 413 before they are read.
MAX_REQUEST_BYTES = 64 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = MAX_REQUEST_BYTES

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
