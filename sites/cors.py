"""CORS for the site API: a browser page may call a site's endpoints only from one of the
origins its operator allowed (sites/public_keys.py). django-cors-headers writes the headers and
answers preflights; this decides, per request, whether the request's Origin is allowed, through
its `check_request_enabled` signal (its settings take one global list, not one per site).

The site comes from the routing middleware, which runs first: a preflight carries no key, only
the path, so the path's site is what names the allowed origins.

`SiteCorsMiddleware` is django-cors-headers' middleware with a short way through for what most
requests are: calls without an Origin header (a site's backend, curl), which can be neither a
cross-origin call nor a preflight. For those it does what the library's does (the `Vary: origin`
of an enabled path) without building request.headers, a mapping of every header, to find out
that there is no Origin.
"""

from __future__ import annotations

from typing import Any

from corsheaders.middleware import CorsMiddleware
from django.http import HttpRequest, HttpResponseBase
from django.utils.cache import patch_vary_headers

from routers.state import request_tenant
from sites.public_keys import allowed_origins, normalize_origin


def origin_allowed(sender: Any, request: HttpRequest, **kwargs: Any) -> bool:
    origin = request.META.get("HTTP_ORIGIN")
    entry = request_tenant()
    if not origin or entry is None:
        return False
    try:
        return normalize_origin(origin) in allowed_origins(entry.id)
    except ValueError:
        return False


class SiteCorsMiddleware(CorsMiddleware):
    def __call__(self, request: HttpRequest) -> Any:
        meta = request.META
        if self.async_mode or "HTTP_ORIGIN" in meta or (
                request.method == "OPTIONS" and "HTTP_ACCESS_CONTROL_REQUEST_METHOD" in meta):
            return super().__call__(request)
        # No Origin: the library's check_preflight answers nothing (not a preflight) and its
        # add_response_headers stops after the Vary header, having found no origin.
        enabled = self.is_enabled(request)
        request._cors_enabled = enabled  # type: ignore[attr-defined]  # as check_preflight
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)  # as the library's: a sync stack
        if enabled:
            patch_vary_headers(response, ("origin",))
        return response
