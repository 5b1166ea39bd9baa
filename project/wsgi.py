"""WSGI entry point for Gunicorn (see deploy/gunicorn.conf.py): two middleware stacks by path.

The JSON API (settings.API_PATH_PREFIX) authenticates every request by header and sets no cookie
of Django's, so the middleware only browser pages need (settings.BROWSER_ONLY_MIDDLEWARE:
session, CSRF, authentication, messages) would be work for nothing on each of its requests: it
is served by a handler built without them. Every other path (the admin above all) gets the
whole of settings.MIDDLEWARE. settings.MIDDLEWARE itself stays complete, so Django's system
checks (the admin's dependencies, `check --deploy`'s CSRF and session-cookie warnings) see
what the admin runs with.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

import django
from django.conf import settings
from django.core.cache import close_caches
from django.core.handlers.base import reset_urlconf
from django.core.handlers.wsgi import WSGIHandler
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, reset_queries
from django.urls import get_resolver

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")


def api_middleware(every: list[str], browser_only: Iterable[str]) -> list[str]:
    """The API's stack: settings.MIDDLEWARE in its order, less the browser-only entries."""
    skipped = set(browser_only)
    return [path for path in every if path not in skipped]


class ApiHandler(WSGIHandler):
    """Django's handler with the browser-only middleware left out of its chain."""

    def load_middleware(self, is_async: bool = False) -> None:
        # Django builds the chain from settings.MIDDLEWARE alone; it is swapped only while this
        # handler is built, once, at start-up, before any request is served.
        every = settings.MIDDLEWARE
        settings.MIDDLEWARE = api_middleware(every, settings.BROWSER_ONLY_MIDDLEWARE)
        try:
            super().load_middleware(is_async)
        finally:
            settings.MIDDLEWARE = every


class PathHandlers:
    """Hands each request to the API's handler or the full one, by its path."""

    def __init__(self) -> None:
        self.full = WSGIHandler()
        self.api = ApiHandler()
        self.prefix = settings.API_PATH_PREFIX

    def handler_for(self, path: str) -> WSGIHandler:
        return self.api if path.startswith(self.prefix) else self.full

    def __call__(self, environ: dict[str, Any],
                 start_response: Callable[..., Any]) -> Any:
        return self.handler_for(environ.get("PATH_INFO", ""))(environ, start_response)


def _closing_caches() -> bool:
    """Whether closing a cache at the end of a request does anything: django-redis keeps its
    connections unless told otherwise (CLOSE_CONNECTION); other backends may not."""
    default = getattr(settings, "DJANGO_REDIS_CLOSE_CONNECTION", False)
    caches: dict[str, dict[str, Any]] = settings.CACHES
    return any(
        cache["BACKEND"] != "django_redis.cache.RedisCache"
        or cache.get("OPTIONS", {}).get("CLOSE_CONNECTION", default)
        for cache in caches.values()
    )


def _all_pooled() -> bool:
    """Whether every database goes through project.pgpool, whose wrappers note their checkouts."""
    databases: dict[str, dict[str, Any]] = settings.DATABASES
    return all(db.get("ENGINE") == "project.pgpool" for db in databases.values())


def lean_request_signals() -> None:
    """Take off the request signals what Django's per-request housekeeping does for nothing in
    a serving worker of this service (Gunicorn's post_worker_init calls it: tests and management
    commands keep Django's defaults). Each walks every database alias (7 in a two-shard
    topology) or cache, and together they were about 6% of a single-row read's Python calls.

    - close_old_connections when a request starts: the previous request of the greenlet handed
      its connections back to the pool when it finished (which stays connected), so there are
      none to close, and the pool checks a connection that sat idle before lending it;
    - reset_queries: queries are logged only with DEBUG, so there is nothing to clear;
    - close_caches: django-redis keeps its pooled connections unless CLOSE_CONNECTION is set;
    - close_old_connections when a request finishes, when every database is pooled by
      project.pgpool: replaced by its return_checked_out, which hands back the connections
      this greenlet took instead of walking every alias (119 of a single-row read's 2,950
      Python calls, 26 after);
    - reset_urlconf: Django sets the URLconf again at the start of each request, and nothing
      in this service sets a request's own (request.urlconf), so what is left between two
      requests is the ROOT_URLCONF that reverse() falls back to anyway (43 calls).
    """
    request_started.disconnect(close_old_connections)
    if not settings.DEBUG:
        request_started.disconnect(reset_queries)
    if not _closing_caches():
        request_finished.disconnect(close_caches)
    if _all_pooled():
        # Imported here: the database backend loads with the apps, after django.setup().
        from project.pgpool.base import return_checked_out

        request_finished.disconnect(close_old_connections)
        request_finished.connect(return_checked_out, dispatch_uid="shardsvc.pgpool.return")
    request_finished.disconnect(reset_urlconf)


def load_urlconf() -> None:
    """Import the URLconf, every view module behind it and the API with its schemas now, in the
    process that loads the app. Django does it at the first request; under Gunicorn with
    preload_app that is each worker's first request, whose imports and schema building (about
    0.2 s here) block every other request of the worker. Loaded in the master, the workers fork
    with it ready (and frozen with the rest of the master's objects: deploy/gunicorn.conf.py)."""
    resolver = get_resolver()
    resolver.url_patterns  # noqa: B018  (the property imports the URLconf)
    resolver._populate()  # the reverse lookups, built once either way


django.setup(set_prefix=False)  # what get_wsgi_application does before building its handler
application = PathHandlers()
load_urlconf()
