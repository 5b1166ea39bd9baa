"""Two middleware stacks by path (project/wsgi.py): the JSON API's without session, CSRF,
authentication and messages; the full one for the admin and every other path."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest
from django.conf import settings
from django.core.cache import close_caches
from django.core.handlers.base import reset_urlconf
from django.core.signals import request_finished, request_started
from django.db import close_old_connections, reset_queries
from django.test import override_settings

from project.pgpool.base import return_checked_out
from project.wsgi import api_middleware, application, lean_request_signals

BROWSER_ONLY = {
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
}


def test_the_api_stack_is_the_full_one_less_the_browser_middleware() -> None:
    assert set(settings.BROWSER_ONLY_MIDDLEWARE) == BROWSER_ONLY
    assert set(settings.MIDDLEWARE) >= BROWSER_ONLY  # the checks see what the admin runs
    api = api_middleware(settings.MIDDLEWARE, settings.BROWSER_ONLY_MIDDLEWARE)
    assert api == [m for m in settings.MIDDLEWARE if m not in BROWSER_ONLY]
    assert "project.middleware.RoutingMiddleware" in api


def test_requests_are_handed_to_a_stack_by_path() -> None:
    assert application.handler_for("/api/sites/acme/threads/1/comments") is application.api
    assert application.handler_for("/api/openapi.json") is application.api
    for path in ("/admin/", "/admin/login/", "/healthz", "/apiary/", "/"):
        assert application.handler_for(path) is application.full, path


def test_only_the_full_stack_checks_csrf_in_its_views() -> None:
    def hooks(handler: object) -> set[str]:
        return {type(m.__self__).__name__
                for m in handler._view_middleware}  # type: ignore[attr-defined]

    assert "CsrfViewMiddleware" in hooks(application.full)
    assert "CsrfViewMiddleware" not in hooks(application.api)
    # Building the API's stack left the settings as they were.
    assert set(settings.MIDDLEWARE) >= BROWSER_ONLY


@pytest.fixture
def django_signals() -> Iterator[None]:
    yield
    request_started.connect(close_old_connections)
    request_started.connect(reset_queries)
    request_finished.connect(close_caches)
    request_finished.disconnect(return_checked_out, dispatch_uid="shardsvc.pgpool.return")
    request_finished.connect(close_old_connections)
    request_finished.connect(reset_urlconf)


def receivers(signal: object) -> set[object]:
    return {ref() for _key, ref, *_ in signal.receivers}  # type: ignore[attr-defined]


def test_a_serving_worker_drops_per_request_housekeeping_that_does_nothing(
        django_signals: None) -> None:
    assert {close_old_connections, reset_queries} <= receivers(request_started)
    assert close_caches in receivers(request_finished)
    lean_request_signals()
    assert not {close_old_connections, reset_queries} & receivers(request_started)
    assert close_caches not in receivers(request_finished)
    # Connections still go back to the pool when a request ends: those the greenlet took.
    assert close_old_connections not in receivers(request_finished)
    assert return_checked_out in receivers(request_finished)
    assert reset_urlconf not in receivers(request_finished)


def test_caches_that_close_their_connections_keep_being_closed(django_signals: None) -> None:
    closing = {"default": {"BACKEND": "django_redis.cache.RedisCache",
                           "LOCATION": "redis://127.0.0.1:1/0",
                           "OPTIONS": {"CLOSE_CONNECTION": True}}}
    with override_settings(CACHES=closing):
        lean_request_signals()
    assert close_caches in receivers(request_finished)


def test_loading_the_app_loads_the_urlconf_and_the_api() -> None:
    """In a process of its own: what importing project.wsgi (Gunicorn's preload) leaves loaded,
    so that no worker's first request imports it."""
    probe = ("import sys; import project.wsgi; from django.urls import get_resolver; "
             "print('comments.api' in sys.modules, 'migrations_tools.ops_dashboard' in "
             "sys.modules, get_resolver()._populated)")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          env=os.environ, cwd=settings.BASE_DIR, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "True", "True"]
