"""Request middleware: routing state (causal tokens in and out) and the tenant of the request."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable

from django.conf import settings
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse, JsonResponse

from project.pgpool.deadline import current_deadline
from project.pgpool.errors import DeadlineExceeded, PoolTimeout
from routers import causal
from routers.context import RequestRouting, current_routing, request_routing
from shards.directory import lookup
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.fence import TenantStillFenced
from shards.tenancy import tenant
from shards.topology import get_shard_map

GetResponse = Callable[[HttpRequest], HttpResponse]
logger = logging.getLogger("shardsvc.requests")
RETRY_AFTER_SECONDS = 2
# Health and metrics never belong to a tenant: an X-Tenant header (or a tenant host name) on
# them must not turn a liveness probe into a directory lookup or a 404.
UNTENANTED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


def database_unavailable(request: HttpRequest, exc: Exception) -> JsonResponse:
    """503 with Retry-After for a database that cannot serve the request right now."""
    code = "database_unavailable"
    timeout = _timeout_message(exc)
    if timeout is not None:
        code, message = "database_timeout", timeout
    elif isinstance(exc, PoolTimeout | TenantStillFenced):
        message = str(exc)
    else:
        # The driver's text can carry host names and ports: log it, answer plainly.
        message = "a database needed for this request is unavailable; retry shortly"
    logger.warning("503 for %s: %s", request.path, exc)
    response = JsonResponse({"error": code, "message": message}, status=503)
    response["Retry-After"] = str(RETRY_AFTER_SECONDS)
    return response


# SQLSTATEs of the service's own query timeouts (project.pgpool.timeouts).
_LOCK_NOT_AVAILABLE = "55P03"
_QUERY_CANCELED = "57014"


def _timeout_message(exc: BaseException) -> str | None:
    """Why the request timed out, if it did: a server-side timeout or the request's deadline."""
    cause: BaseException | None = exc
    while cause is not None:
        sqlstate = getattr(cause, "sqlstate", None)
        if sqlstate == _LOCK_NOT_AVAILABLE:
            return (f"a lock wait passed lock_timeout ({settings.DB_LOCK_TIMEOUT:g} s): "
                    "another transaction holds what this request needs; retry shortly")
        if sqlstate == _QUERY_CANCELED:
            return (f"a query ran past statement_timeout ({settings.DB_STATEMENT_TIMEOUT:g} s) "
                    "or was canceled; retry shortly")
        cause = cause.__cause__
    deadline = current_deadline()
    if isinstance(exc, DeadlineExceeded) or (deadline is not None and deadline.expired):
        # The driver's error (a cut connection) says nothing useful: name the deadline.
        return str(deadline.error()) if deadline is not None else str(exc)
    return None


class CausalConsistencyMiddleware:
    """Outermost: sets up the request's routing state and hands out causal tokens."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        state = RequestRouting()
        seen: list[dict[str, int]] = []
        for raw in (request.COOKIES.get(causal.COOKIE), request.headers.get(causal.HEADER)):
            if raw:
                decoded = causal.decode(raw)
                if decoded is None:
                    state.distrust_replicas = True
                else:
                    seen.append(decoded[0])
                    for tenant_id, version in decoded[1].items():
                        state.tenant_versions[tenant_id] = max(
                            version, state.tenant_versions.get(tenant_id, 0))
        known = {c.name for c in get_shard_map().clusters} if seen else set()
        state.tokens = {k: v for k, v in causal.merge(*seen).items() if k in known}
        with request_routing(state):
            response = self.get_response(request)
            written = {
                name: lsn for name in sorted(state.written)
                if (lsn := causal.position_after_writes(name)) is not None
            }
        if written:
            value = causal.encode(causal.merge(state.tokens, written), state.tenant_versions)
            response[causal.HEADER] = value
            response.set_cookie(causal.COOKIE, value, max_age=causal.MAX_AGE_SECONDS,
                                httponly=True, samesite="Lax")
        return response


class TenantMiddleware:
    """Sets the current tenant from the request: a path segment, a header or the host name,
    tried in the order of settings.TENANT_SOURCES. A request that names no tenant runs without
    one (control endpoints); one that names a bad or unknown tenant gets 400 or 404."""

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.sources = tuple(getattr(settings, "TENANT_SOURCES", ("path", "header")))
        self.path_re = re.compile(
            getattr(settings, "TENANT_PATH_PATTERN", r"^/api/sites/(?P<tenant>[^/]+)/")
        )
        self.header = getattr(settings, "TENANT_HEADER", "X-Tenant")
        self.host_suffix = getattr(settings, "TENANT_HOST_SUFFIX", None)

    def tenant_key(self, request: HttpRequest) -> str | None:
        for source in self.sources:
            if source == "path" and (match := self.path_re.match(request.path_info)):
                return match.group("tenant")
            if source == "header" and (value := request.headers.get(self.header)):
                return value
            if source == "host" and self.host_suffix:
                host = request.get_host().split(":")[0]
                if host.endswith(self.host_suffix) and host != self.host_suffix.lstrip("."):
                    return host[: -len(self.host_suffix)]
        return None

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if request.path_info in UNTENANTED_PATHS:
            # Probes and scrapes answer for the process, whatever a proxy adds to the request.
            return self.get_response(request)
        key = self.tenant_key(request)
        if key is None:
            return self.get_response(request)
        try:
            entry = lookup(key)
        except MalformedTenantKey as exc:
            return JsonResponse({"error": "malformed_tenant", "message": str(exc)}, status=400)
        except UnknownTenant:
            return JsonResponse(
                {"error": "unknown_tenant", "message": f"no tenant {key!r}"}, status=404
            )
        except OperationalError as exc:
            return database_unavailable(request, exc)
        routing = current_routing()
        if routing is not None and routing.tenant_versions.get(entry.id, 0) > entry.version:
            # The client wrote after a placement change this worker has not seen yet.
            entry = lookup(key, fresh=True)
        request.tenant = entry  # type: ignore[attr-defined]
        with tenant(entry):
            response = self.get_response(request)
        if routing is not None and routing.written:
            # The version the write was made under (a fenced write may have reloaded it).
            latest = lookup(entry.id).version
            routing.tenant_versions[entry.id] = max(
                latest, routing.tenant_versions.get(entry.id, 0))
        return response
