"""Settings of the plain baseline: one database through PgBouncer, nothing else."""

from __future__ import annotations

import os
from urllib.parse import urlsplit

_dsn = urlsplit(os.environ.get("PLAIN_DSN", "postgresql://app@127.0.0.1:15400/shard_0"))

SECRET_KEY = os.environ.get("PLAIN_SECRET_KEY", "plain-baseline-signs-nothing")
DEBUG = False
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.benchmarks.plain_django.urls"
WSGI_APPLICATION = "tests.benchmarks.plain_django.wsgi.application"
INSTALLED_APPS = ["tests.benchmarks.plain_django"]
MIDDLEWARE: list[str] = []
USE_TZ = True
TIME_ZONE = "UTC"
DATABASES = {
    "default": {
        "ENGINE": "django_db_geventpool.backends.postgresql_psycopg3",
        "NAME": _dsn.path.lstrip("/"),
        "USER": _dsn.username or "",
        "PASSWORD": _dsn.password or "",
        "HOST": _dsn.hostname or "",
        "PORT": str(_dsn.port or 5432),
        # django-db-geventpool keeps its own pool; Django must not close connections itself.
        "CONN_MAX_AGE": 0,
        # Held server-side cursors are session state, which transaction pooling does not keep.
        "DISABLE_SERVER_SIDE_CURSORS": True,
        "OPTIONS": {"MAX_CONNS": int(os.environ.get("PLAIN_MAX_CONNS", "20"))},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}
