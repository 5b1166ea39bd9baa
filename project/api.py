"""The HTTP API: one NinjaAPI, its OpenAPI schema at /api/openapi.json, and every error a view
raises turned into a JSON answer with a status and a message (never a stack trace) by the one
error map, project.error_map."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed
from django.urls import URLPattern, URLResolver
from django.views.decorators.cache import cache_control
from ninja import NinjaAPI
from ninja.parser import Parser
from ninja.types import DictStrAny

from comments.api import router as site_router
from comments.ops import router as ops_comments_router
from project.error_map import RULES, UnsupportedMediaType, answer_for
from project.errors import error, error_response
from sites import throttle
from sites.api import router as ops_router


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


def _finished(view: Callable[..., Any]) -> Callable[..., Any]:
    """Every answer of the API's views, finished the same way: a throttle check still waiting
    is made before it leaves; and ninja answers a method a path does not take with a
    plain-text 405, which becomes the API's JSON error, keeping the Allow header."""

    @functools.wraps(view)  # keeps csrf_exempt and the other attributes ninja set
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        response = view(request, *args, **kwargs)
        try:
            # A throttle check that waited for a Redis read the request never made: made now,
            # before anything of the answer leaves (sites/throttle.py).
            throttle.settle_deferred(request)
        except throttle.Throttled as exc:
            return on_error(request, exc)
        if isinstance(response, HttpResponseNotAllowed):
            allowed = ", ".join(sorted(m.strip() for m in response["Allow"].split(",")))
            answer = error(405, "method_not_allowed",
                           f"{request.method} is not allowed here; allowed: {allowed}")
            answer["Allow"] = allowed
            return answer
        return response

    return wrapper


# The schema is the same for every caller and changes only with a deploy: shared caches (the
# edge's proxy cache, a CDN) may keep it a few minutes.
SCHEMA_CACHE = cache_control(public=True, max_age=300)


class ServiceAPI(NinjaAPI):
    @property
    def urls(self) -> tuple[list[URLResolver | URLPattern], str, str]:
        patterns, app_name, namespace = super().urls
        for pattern in patterns:
            if isinstance(pattern, URLPattern):
                pattern.callback = _finished(pattern.callback)
                if pattern.name == "openapi-json":
                    pattern.callback = SCHEMA_CACHE(pattern.callback)
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
# The site API first: URL resolution tries ninja's routes in this order, and nearly every
# request is a site's (the ops paths never match one of its URLs, nor it theirs).
api.add_router("/sites/{site}", site_router)
api.add_router("/ops", ops_router)
api.add_router("/ops/comments", ops_comments_router)


def on_error(request: HttpRequest, exc: Exception | type[Exception]) -> HttpResponse:
    """Every error a view raises, answered from the one error map."""
    # ninja's handler type admits a class; it passes the raised instance.
    raised = exc if isinstance(exc, Exception) else exc()
    return error_response(answer_for(raised, request.path))


for _exception in RULES:
    if issubclass(_exception, Exception):
        api.add_exception_handler(_exception, on_error)
