"""The routing middleware (project/middleware.py): tokens in, tenant, database unavailability,
tokens out, in that order. The directory and the primary's WAL position are answered from a
script; everything else is the real code."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import pytest
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse
from django.test import RequestFactory

from project import middleware
from project.middleware import RoutingMiddleware
from routers import causal
from routers.state import RoutingState, current_state, end_request
from shards.directory import TenantEntry
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.tenancy import current_tenant

ALPHA = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=3, min_lsn=0)
MOVED = TenantEntry(id=101, slug="alpha", shard="shard_1", state="active", version=4, min_lsn=0)


class Directory:
    """`lookup` answered from memory: `fresh=True` sees the latest placement."""

    def __init__(self) -> None:
        self.cached = ALPHA
        self.latest = ALPHA
        self.error: Exception | None = None
        self.fresh_lookups = 0

    def lookup(self, key: str | int, *, fresh: bool = False) -> TenantEntry:
        if self.error is not None:
            raise self.error
        if key not in ("alpha", 101):
            raise UnknownTenant(key)
        self.fresh_lookups += fresh
        return self.latest if fresh else self.cached


@pytest.fixture
def directory(monkeypatch: pytest.MonkeyPatch) -> Iterator[Directory]:
    scripted = Directory()
    monkeypatch.setattr(middleware, "lookup", scripted.lookup)
    monkeypatch.setattr(causal, "primary_position", lambda cluster: 0x5000)
    yield scripted
    end_request()


def run(view: Callable[[HttpRequest], HttpResponse], path: str = "/api/sites/alpha/threads",
        **headers: str) -> HttpResponse:
    request = RequestFactory().get(path, **{f"HTTP_{k.upper()}": v for k, v in headers.items()})
    return RoutingMiddleware(view)(request)


def body(response: HttpResponse) -> dict[str, str]:
    return json.loads(response.content)


def ok(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok")


def test_the_view_runs_with_the_named_tenant_current(directory: Directory) -> None:
    seen: list[object] = []

    def view(request: HttpRequest) -> HttpResponse:
        state = current_state()
        seen.extend([current_tenant(), state.tenant if state else None])
        return HttpResponse("ok")

    response = run(view)
    assert response.status_code == 200
    assert seen == [ALPHA, ALPHA]
    assert current_tenant() is None  # the scope ends with the view
    assert causal.HEADER not in response  # nothing written, no token


@pytest.mark.parametrize(("error", "status", "code"), [
    (MalformedTenantKey("a slug is 1 to 63 of a-z, 0-9 and -"), 400, "malformed_tenant"),
    (OperationalError("directory down"), 503, "database_unavailable"),
])
def test_a_tenant_that_cannot_be_resolved_is_answered_before_the_view(
        directory: Directory, error: Exception, status: int, code: str) -> None:
    directory.error = error
    response = run(lambda request: pytest.fail("the view ran"))
    assert (response.status_code, body(response)["error"]) == (status, code)
    assert response.has_header("Retry-After") is (status == 503)


def test_an_unknown_tenant_is_404(directory: Directory) -> None:
    response = run(lambda request: pytest.fail("the view ran"), "/api/sites/nope/threads")
    assert response.status_code == 404
    assert body(response) == {"error": "unknown_tenant", "message": "no tenant 'nope'"}


def test_probes_ignore_a_tenant_header(directory: Directory) -> None:
    directory.error = OperationalError("directory down")
    assert run(ok, "/healthz", x_tenant="alpha").status_code == 200


def test_a_view_that_wrote_gets_a_token_with_the_write_and_what_came_in(
        directory: Directory) -> None:
    incoming = causal.encode({"shard_1": 0x10}, {101: 2})

    def view(request: HttpRequest) -> HttpResponse:
        state = current_state()
        assert state is not None and state.tokens == {"shard_1": 0x10}
        state.note_write("shard_0")  # what the write tracker does when SQL that writes runs
        return HttpResponse("ok")

    response = run(view, x_causal_token=incoming)
    decoded = causal.decode(response[causal.HEADER])
    assert decoded == ({"shard_0": 0x5000, "shard_1": 0x10}, {101: ALPHA.version})
    assert response.cookies[causal.COOKIE].value == response[causal.HEADER]


def test_a_forged_token_sends_the_requests_reads_to_primaries(directory: Directory) -> None:
    flags: list[bool] = []

    def view(request: HttpRequest) -> HttpResponse:
        state = current_state()
        flags.append(state is not None and state.distrust_replicas)
        return HttpResponse("ok")

    run(view, x_causal_token="forged")
    assert flags == [True]


def test_a_client_that_saw_a_newer_placement_makes_the_worker_reload_it(
        directory: Directory) -> None:
    directory.latest = MOVED
    token = causal.encode({}, {101: MOVED.version})
    seen: list[object] = []
    run(lambda request: seen.append(current_tenant()) or HttpResponse("ok"),
        x_causal_token=token)
    assert seen == [MOVED] and directory.fresh_lookups == 1


def test_database_unavailability_raised_by_a_view_is_a_503(directory: Directory) -> None:
    request = RequestFactory().get("/api/sites/alpha/threads")
    routing = RoutingMiddleware(ok)
    answer = routing.process_exception(request, OperationalError("primary down"))
    assert answer is not None and answer.status_code == 503
    assert answer["Retry-After"] == "2"
    assert routing.process_exception(request, ValueError("not ours")) is None


def test_metrics_and_the_request_log_read_the_state_after_the_response(
        directory: Directory) -> None:
    run(ok)
    state = current_state()
    assert isinstance(state, RoutingState) and state.tenant == ALPHA
    end_request()
    assert current_state() is None
