"""The production URLconf serves no test-only endpoint; the test URLconf (tests/urls.py) adds
them under paths the production tenant pattern already covers, ahead of django-ninja's include."""

from __future__ import annotations

import pytest
from django.test import RequestFactory
from django.urls import Resolver404, resolve

from project.middleware import tenant_key
from tests import diagnostics


@pytest.mark.parametrize("path", [
    "/_diag/sleep",
    "/_diag/plain/shard_0_replica_1/threads/1",
    "/api/sites/acme/_diag/where",
    "/t/acme/_diag/where",
])
def test_the_production_urlconf_has_no_diagnostics(path: str) -> None:
    try:
        match = resolve(path, urlconf="project.urls")
    except Resolver404:
        return
    assert "_diag" not in (match.route or ""), match


@pytest.mark.parametrize(("path", "view", "route"), [
    ("/_diag/sleep", diagnostics.sleep, "_diag/sleep"),
    ("/api/sites/acme/_diag/threads", diagnostics.threads, "api/sites/<str:tenant>/_diag/threads"),
    ("/api/sites/acme/_diag/threads/7", diagnostics.thread,
     "api/sites/<str:tenant>/_diag/threads/<int:thread_id>"),
    ("/api/sites/acme/_diag/where", diagnostics.where, "api/sites/<str:tenant>/_diag/where"),
])
def test_the_test_urlconf_reaches_diagnostics_before_the_api(path: str, view: object,
                                                             route: str) -> None:
    match = resolve(path, urlconf="tests.urls")
    assert (match.func, match.route) == (view, route)


def test_the_test_urlconf_still_serves_the_api() -> None:
    match = resolve("/api/sites/acme/threads", urlconf="tests.urls")
    assert "_diag" not in match.route and match.route.startswith("api/")


def test_the_tenant_path_pattern_covers_the_diagnostics_tenant_routes_only_under_the_api() -> None:
    requests = RequestFactory()
    assert tenant_key(requests.get("/api/sites/acme/_diag/where")) == "acme"
    assert tenant_key(requests.get("/t/acme/_diag/where")) is None
