"""Refuse oversized requests before anything reads them."""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

from project.errors import error


class RequestSizeLimitMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.limit = int(settings.MAX_REQUEST_BYTES)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        try:
            length = int(request.META.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return error(400, "bad_request", "bad Content-Length")
        if length > self.limit:
            return error(413, "too_large",
                         f"request body of {length} bytes exceeds {self.limit} bytes")
        return self.get_response(request)
