"""The HTTP API: one NinjaAPI, its OpenAPI schema at /api/openapi.json, and one place that turns
every error into a JSON answer with a status and a message (never a stack trace)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

from django.core.exceptions import RequestDataTooBig
from django.db import DataError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import URLPattern, URLResolver
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError
from ninja.parser import Parser
from ninja.types import DictStrAny
from redis.exceptions import RedisError

from comments.api import router as site_router
from comments.cursors import BadCursor
from comments.ops import router as ops_comments_router
from comments.service import Conflict, Forbidden, Invalid, NotFound
from project.throttle import Throttled
from routers.errors import RoutingError
from routers.middleware import database_unavailable
from shards.errors import UnknownShard
from shards.fence import TenantStillFenced
from shards.placement import NoShardAcceptsTenants
from sites.api import router as ops_router
from sites.service import SiteExists

logger = logging.getLogger("shardsvc.api")


class UnsupportedMediaType(ValueError):
    """A request body that is not JSON in UTF-8."""


class JsonBodyParser(Parser):
    """Bodies are JSON, and say so: ninja's own parser reads JSON from any content type, so a
    form post or text/plain body would be taken as if it were JSON."""

    def parse_body(self, request: HttpRequest) -> DictStrAny:
        charset = (request.content_params or {}).get("charset", "utf-8").lower()
        if request.content_type != "application/json" or charset not in ("utf-8", "utf8"):
            got = request.META.get("CONTENT_TYPE", "")[:100] or "none"
            raise UnsupportedMediaType(
                f"request bodies must be JSON in UTF-8: send Content-Type: application/json "
                f"(got {got!r})"
            )
        return super().parse_body(request)


def _json_method_not_allowed(view: Callable[..., Any]) -> Callable[..., Any]:
    """ninja answers a method a path does not take with a plain-text 405; this makes it the
    API's JSON error, keeping the Allow header."""

    @functools.wraps(view)  # keeps csrf_exempt and the other attributes ninja set
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = view(request, *args, **kwargs)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = ", ".join(sorted(m.strip() for m in response["Allow"].split(",")))
            answer = error(request, 405, "method_not_allowed",
                           f"{request.method} is not allowed here; allowed: {allowed}")
            answer["Allow"] = allowed
            return answer
        return response

    return wrapper


class ServiceAPI(NinjaAPI):
    @property
    def urls(self) -> tuple[list[URLResolver | URLPattern], str, str]:
        patterns, app_name, namespace = super().urls
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                pattern.callback = _json_method_not_allowed(pattern.callback)
        return patterns, app_name, namespace


api = ServiceAPI(
    title="shardsvc comments API",
    version="1.0",
    description=(
        "A multi-tenant comments service: each site is a tenant on one PostgreSQL shard. "
        "Site endpoints need the site's X-Api-Key; writes also an X-User-Token. "
        "Request bodies are JSON (Content-Type: application/json)."
    ),
    urls_namespace="api",
    parser=JsonBodyParser(),
)
api.add_router("/ops", ops_router)
api.add_router("/ops/comments", ops_comments_router)
api.add_router("/sites/{site}", site_router)


def error(request: HttpRequest, status: int, code: str, message: str) -> HttpResponse:
    return api.create_response(request, {"error": code, "message": message}, status=status)


_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
                 405: "method_not_allowed", 409: "conflict", 413: "too_large",
                 415: "unsupported_media_type", 422: "invalid", 429: "rate_limited",
                 503: "unavailable"}


@api.exception_handler(HttpError)
def on_http_error(request: HttpRequest, exc: HttpError) -> HttpResponse:
    if isinstance(exc.__cause__, UnsupportedMediaType):
        # ninja turns every parser error into "400 Cannot parse request body", keeping the
        # cause: a body that is not JSON at all is the client's content type, not its syntax.
        return error(request, 415, "unsupported_media_type", str(exc.__cause__))
    return error(request, exc.status_code, _STATUS_CODES.get(exc.status_code, "error"), str(exc))


@api.exception_handler(Throttled)
def on_throttled(request: HttpRequest, exc: Throttled) -> HttpResponse:
    answer = error(request, 429, "rate_limited", str(exc))
    answer["Retry-After"] = str(exc.retry_after)
    return answer


@api.exception_handler(AuthenticationError)
def on_auth_error(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return error(request, 401, "unauthorized",
                 "missing or wrong credentials: send the site's X-Api-Key (ops: X-Ops-Token)")


@api.exception_handler(ValidationError)
def on_validation_error(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    details = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in exc.errors
    ]
    return api.create_response(
        request,
        {"error": "invalid", "message": "; ".join(details)[:2000] or "invalid request"},
        status=422,
    )


@api.exception_handler(NotFound)
def on_not_found(request: HttpRequest, exc: NotFound) -> HttpResponse:
    return error(request, 404, "not_found", str(exc))


@api.exception_handler(Forbidden)
def on_forbidden(request: HttpRequest, exc: Forbidden) -> HttpResponse:
    return error(request, 403, "forbidden", str(exc))


@api.exception_handler(Invalid)
def on_invalid(request: HttpRequest, exc: Invalid) -> HttpResponse:
    return error(request, 422, "invalid", str(exc))


@api.exception_handler(BadCursor)
def on_bad_cursor(request: HttpRequest, exc: BadCursor) -> HttpResponse:
    return error(request, 400, "bad_cursor", str(exc))


@api.exception_handler(Conflict)
def on_conflict(request: HttpRequest, exc: Conflict) -> HttpResponse:
    return error(request, 409, "conflict", str(exc))


@api.exception_handler(SiteExists)
def on_site_exists(request: HttpRequest, exc: SiteExists) -> HttpResponse:
    return error(request, 409, "conflict", str(exc))


@api.exception_handler(UnknownShard)
def on_unknown_shard(request: HttpRequest, exc: UnknownShard) -> HttpResponse:
    logger.info("unknown shard on %s: %s", request.path, exc)  # names the topology file
    return error(request, 422, "invalid", exc.public_message)


@api.exception_handler(NoShardAcceptsTenants)
def on_no_shard(request: HttpRequest, exc: NoShardAcceptsTenants) -> HttpResponse:
    return error(request, 503, "unavailable", str(exc))


@api.exception_handler(RequestDataTooBig)
def on_too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return error(request, 413, "too_large", "request body too large")


@api.exception_handler(OperationalError)
def on_database_down(request: HttpRequest, exc: OperationalError) -> HttpResponse:
    return database_unavailable(request, exc)


@api.exception_handler(TenantStillFenced)
def on_still_fenced(request: HttpRequest, exc: TenantStillFenced) -> HttpResponse:
    return database_unavailable(request, exc)


@api.exception_handler(DataError)
def on_data_error(request: HttpRequest, exc: DataError) -> HttpResponse:
    # Validation should catch these first; the database is the last line.
    logger.warning("data error on %s: %s", request.path, exc)
    return error(request, 422, "invalid", "a value was not accepted by the database")


@api.exception_handler(RoutingError)
def on_routing_error(request: HttpRequest, exc: RoutingError) -> HttpResponse:
    logger.error("routing error on %s: %s", request.path, exc)
    return error(request, 404, "not_found", "no such resource on this site")


@api.exception_handler(RedisError)
def on_redis_error(request: HttpRequest, exc: RedisError) -> HttpResponse:
    # Caches treat Redis failing as a miss; only a caller that cannot work without Redis lets
    # the error through, and that is a 503 worth retrying, not a 500.
    logger.warning("503 for %s: Redis: %s", request.path, exc)
    response = error(request, 503, "cache_unavailable",
                     "Redis, needed for this request, is unavailable; retry shortly")
    response["Retry-After"] = "2"
    return response


@api.exception_handler(Exception)
def on_unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    logger.exception("unhandled error on %s", request.path)
    return error(request, 500, "internal", "internal error; it has been logged")
