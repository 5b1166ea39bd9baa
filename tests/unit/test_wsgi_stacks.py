"""Two middleware stacks by path (project/wsgi.py): the JSON API's without session, CSRF,
authentication and messages; the full one for the admin and every other path."""

from __future__ import annotations

from django.conf import settings

from project.wsgi import api_middleware, application

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
