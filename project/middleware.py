"""The routing middleware: the one place a request's routing state is set up, in this order:

1. causal tokens in (cookie and header) -> the request's `RoutingState`;
2. the tenant the request names (path, header or host; `tenant_key`) -> 400, 404 or 503 when
   it is malformed, unknown or its directory is unreachable;
3. the view, with database unavailability it raises answered 503 with Retry-After;
4. causal tokens out for the shards the request wrote.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import lru_cache

from django.conf import settings
from django.core.signals import request_finished
from django.db import OperationalError
from django.http import HttpRequest, HttpResponse

from project.error_map import answer_for, is_database_unavailable
from project.errors import error_response
from routers import causal
from routers.state import RoutingState, begin_request, end_request
from shards.directory import TenantEntry, lookup
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.tenancy import tenant
from shards.topology import get_shard_map

GetResponse = Callable[[HttpRequest], HttpResponse]
# Health and metrics never belong to a tenant: an X-Tenant header (or a tenant host name) on
# them must not turn a liveness probe into a directory lookup or a 404.
UNTENANTED_PATHS = frozenset({"/healthz", "/readyz", "/readyz/shards", "/metrics"})

request_finished.connect(end_request, dispatch_uid="shardsvc.routing.end_request")


@lru_cache(maxsize=4)
def _path_pattern(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def tenant_key(request: HttpRequest) -> str | None:
    """The slug or id the request names its tenant by: a path segment
    (settings.TENANT_PATH_PATTERN), a header (TENANT_HEADER) or the host name
    (TENANT_HOST_SUFFIX), tried in the order of settings.TENANT_SOURCES; None if it names none.
    The service's only parser of a tenant out of a request."""
    for source in settings.TENANT_SOURCES:
        if source == "path":
            match = _path_pattern(settings.TENANT_PATH_PATTERN).match(request.path_info)
            if match:
                return match.group("tenant")
        elif source == "header" and (value := request.headers.get(settings.TENANT_HEADER)):
            return value
        elif source == "host" and (suffix := settings.TENANT_HOST_SUFFIX):
            host = request.get_host().split(":")[0]
            if host.endswith(suffix) and host != suffix.lstrip("."):
                return host[: -len(suffix)]
    return None


# The causal token's header as WSGI names it: read from META, as the API's other hot-path
# headers are, so that no request builds request.headers (a mapping of all of them) for it.
_CAUSAL_META = "HTTP_" + causal.HEADER.upper().replace("-", "_")


def read_causal_tokens(request: HttpRequest, state: RoutingState) -> None:
    meta = request.META
    # Cookies are parsed only when there are some (a site's backend sends none).
    cookie = request.COOKIES.get(causal.COOKIE) if meta.get("HTTP_COOKIE") else None
    raw = [value for value in (cookie, meta.get(_CAUSAL_META)) if value]
    if raw:
        state.accept_tokens((causal.decode(value) for value in raw),
                            (c.name for c in get_shard_map().clusters))


def write_causal_tokens(response: HttpResponse, state: RoutingState) -> None:
    written = {
        name: lsn for name in sorted(state.written)
        if (lsn := causal.position_after_writes(name)) is not None
    }
    if not written:
        return
    value = causal.encode(causal.merge(state.tokens, written), state.tenant_versions)
    response[causal.HEADER] = value
    response.set_cookie(causal.COOKIE, value, max_age=causal.MAX_AGE_SECONDS,
                        httponly=True, samesite="Lax")


class RoutingMiddleware:
    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        state = RoutingState()
        begin_request(state)
        read_causal_tokens(request, state)
        key = None if request.path_info in UNTENANTED_PATHS else tenant_key(request)
        if key is None:
            # Control endpoints, and probes and scrapes, which answer for the process whatever
            # a proxy adds to the request.
            response = self.get_response(request)
        else:
            try:
                entry = self._resolve(key, state)
            except (MalformedTenantKey, UnknownTenant, OperationalError) as exc:
                # 400, 404, or 503 when the directory cannot be read.
                return error_response(answer_for(exc, request.path))
            with tenant(entry):
                response = self.get_response(request)
            if state.written:
                # The version the write was made under (a fenced write may have reloaded it).
                state.saw_tenant_version(entry.id, lookup(entry.id).version)
        write_causal_tokens(response, state)
        return response

    @staticmethod
    def _resolve(key: str, state: RoutingState) -> TenantEntry:
        entry = lookup(key)
        if state.placement_is_stale(entry):
            # The client wrote after a placement change this worker has not seen yet.
            entry = lookup(key, fresh=True)
        state.set_tenant(entry)
        return entry

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if is_database_unavailable(exception):
            return error_response(answer_for(exception, request.path))
        return None
