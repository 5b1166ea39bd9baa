"""CORS for the site API: a browser page may call a site's endpoints only from one of the
origins its operator allowed (sites/public_keys.py). django-cors-headers writes the headers and
answers preflights; this decides, per request, whether the request's Origin is allowed, through
its `check_request_enabled` signal (its settings take one global list, not one per site).

The site comes from the routing middleware, which runs first: a preflight carries no key, only
the path, so the path's site is what names the allowed origins.
"""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from routers.state import request_tenant
from sites.public_keys import allowed_origins, normalize_origin


def origin_allowed(sender: Any, request: HttpRequest, **kwargs: Any) -> bool:
    origin = request.headers.get("origin")
    entry = request_tenant()
    if not origin or entry is None:
        return False
    try:
        return normalize_origin(origin) in allowed_origins(entry.id)
    except ValueError:
        return False
