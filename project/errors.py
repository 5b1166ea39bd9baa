"""The one shape of every error the service answers: `{"error": code, "message": text}` in JSON,
with its status and, for errors worth retrying, a Retry-After header.

Nothing here imports an application or a model, so the Gunicorn worker (loaded before Django's
apps) and every middleware can use it. Which exception gets which answer is `project.error_map`.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.http import HttpResponse

CONTENT_TYPE = "application/json; charset=utf-8"
# How long a client should wait before retrying an answer that says "retry shortly".
RETRY_AFTER_SECONDS = 2

# The code an error gets when nothing more specific names it: one per status.
STATUS_CODES = {
    400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "too_large", 414: "uri_too_long",
    415: "unsupported_media_type", 417: "expectation_failed", 422: "invalid",
    429: "rate_limited", 431: "headers_too_large", 500: "internal", 501: "not_implemented",
    503: "unavailable",
}


def code_for_status(status: int) -> str:
    return STATUS_CODES.get(status, "error")


@dataclass(frozen=True)
class ErrorAnswer:
    status: int
    code: str
    message: str
    # seconds for Retry-After; None sends no header
    retry_after: int | None = None
    # more fields of the body, for errors that say more than a message (e.g. which shards)
    extra: Mapping[str, Any] | None = None

    def body(self) -> bytes:
        return json.dumps({"error": self.code, "message": self.message,
                           **(self.extra or {})}).encode()


def error_response(answer: ErrorAnswer) -> HttpResponse:
    response = HttpResponse(answer.body(), status=answer.status, content_type=CONTENT_TYPE)
    if answer.retry_after is not None:
        response["Retry-After"] = str(answer.retry_after)
    return response


def error(status: int, code: str, message: str, *, retry_after: int | None = None) -> HttpResponse:
    """The JSON answer for one error."""
    return error_response(ErrorAnswer(status, code, message, retry_after))
