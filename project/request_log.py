"""Structured logs: one JSON object per line on stderr, carrying the request's id, site and shard.

    {"timestamp": "2025-01-01T12:00:00.123Z", "level": "INFO", "logger": "shardsvc.access",
     "message": "GET /api/sites/acme/threads 200 4.1 ms", "request_id": "9f0c...", "site": "acme",
     "shard": "shard_0", "route": "api/sites/<site>/threads", "method": "GET", "status": 200,
     "duration_ms": 4.1}

`RequestLogMiddleware` (outermost) takes the request id from `X-Request-Id` when it is
well-formed, else makes one, and echoes it in the response. The id lives in a context variable,
so `RequestContextFilter` adds it, and the current tenant's slug and shard, to every record logged
while the request runs, by any logger. It writes one access line per request to
`shardsvc.access`. Under gevent a context variable is per greenlet: greenlets spawned by a
request start without it unless the spawner copies the context (see shards.tenancy).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from django.core.signals import request_finished
from django.http import HttpRequest, HttpResponse

from project.metrics import route_of
from shards.tenancy import current_tenant

REQUEST_ID_HEADER = "X-Request-Id"
# Read from META: request.headers would build a mapping of every header for this one.
_REQUEST_ID_META = "HTTP_X_REQUEST_ID"
# Accepted as given: what tracing systems send (UUIDs, hex, base64url ids), short enough to log.
_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")

access_logger = logging.getLogger("shardsvc.access")
# What every record would otherwise gather and no format in this process writes: where the call
# was made from (found by walking the caller's stack) and the multiprocessing name. One access
# line per request pays for it; the logging HOWTO's "Optimization" section documents these
# switches. The thread id and name go too (no format here writes them; under gevent, finding the
# current thread's name for every record goes through gevent's thread-id lookups). The process
# id stays: Gunicorn's own log format writes %(process)d.
logging._srcfile = None
logging.logMultiprocessing = False
logging.logThreads = False


@dataclass
class RequestLogContext:
    request_id: str
    route: str | None = None
    # Filled once the request knows its tenant, for lines logged after the tenant context ended
    # (Django logs 4xx/5xx responses after every middleware has returned).
    site: str | None = None
    shard: str | None = None


_context: ContextVar[RequestLogContext | None] = ContextVar("shardsvc_request_log", default=None)


def request_id_from(raw: str | None) -> str:
    """The caller's id if well-formed, else a new one: ids end up in logs, so never trust them."""
    if raw and _REQUEST_ID_RE.match(raw):
        return raw
    return new_request_id()


def new_request_id() -> str:
    """What uuid.uuid4().hex gives (random, version 4, RFC 4122 variant), without building a
    UUID object: its constructor's checks were most of the request id's cost."""
    raw = bytearray(os.urandom(16))
    raw[6] = (raw[6] & 0x0F) | 0x40
    raw[8] = (raw[8] & 0x3F) | 0x80
    return raw.hex()


def _tenant_of(request: HttpRequest) -> tuple[str | None, str | None]:
    """The site and shard of the tenant the request named (its routing state outlives the
    middleware that set it, until the next request)."""
    # Imported here: logging is configured, and this module imported, before the apps load.
    from routers.state import request_tenant

    entry = request_tenant()
    if entry is None:
        return None, None
    return entry.slug, entry.shard


class RequestLogMiddleware:
    """Outermost: the request id, the log context, and the access line."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        ctx = RequestLogContext(request_id=request_id_from(request.META.get(_REQUEST_ID_META)))
        # Set, not reset on return: Django logs error responses after the middleware chain has
        # returned, and those lines must carry the id too. The next request (same greenlet on a
        # keep-alive connection) replaces it; request_finished clears it.
        _context.set(ctx)
        request.request_id = ctx.request_id  # type: ignore[attr-defined]
        started = time.perf_counter()
        response = self.get_response(request)
        duration_ms = round((time.perf_counter() - started) * 1000, 2)
        ctx.route = route_of(request)
        ctx.site, ctx.shard = _tenant_of(request)
        response[REQUEST_ID_HEADER] = ctx.request_id
        access_logger.info(
            "%s %s %s %.1f ms", request.method, request.path, response.status_code, duration_ms,
            extra={"method": request.method, "path": request.path,
                   "status": response.status_code, "duration_ms": duration_ms},
        )
        return response


def _clear_context(**kwargs: Any) -> None:
    _context.set(None)


request_finished.connect(_clear_context, dispatch_uid="shardsvc.request_log.clear")




class RequestContextFilter(logging.Filter):
    """Adds request_id, site, shard and route to every record; values given in `extra` win."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        try:
            entry = current_tenant()
        except Exception:  # never lose a log line over its decoration
            entry = None
        site = entry.slug if entry is not None else (ctx.site if ctx else None)
        shard = entry.shard if entry is not None else (ctx.shard if ctx else None)
        for name, value in (
            ("request_id", ctx.request_id if ctx else None),
            ("route", ctx.route if ctx else None),
            ("site", site),
            ("shard", shard),
        ):
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


# Attributes every LogRecord has; anything else on a record came from `extra` or a filter.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "taskName"}
# Objects Django passes in `extra` that say nothing a JSON line needs.
_DROP = frozenset({"request", "server_time"})
_SKIP = _STANDARD | _DROP


# One encoder for every line: json.dumps with options other than its defaults builds a new
# encoder per call.
_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (UTC, ms), level, logger, message, then context
    (request_id, site, shard, route) and any `extra` fields; exc/stack as text."""

    _second: tuple[int, str] = (-1, "")

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "timestamp": self._timestamp(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if value is None or key in _SKIP or key[0] == "_":
                continue
            payload[key] = value
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            payload["stack"] = self.formatStack(record.stack_info)
        return _ENCODER.encode(payload)

    def _timestamp(self, record: logging.LogRecord) -> str:
        # Lines come many to a second: the date and time of day are formatted once per second.
        # One tuple: a thread never pairs one second with another's text.
        second, text = self._second
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = (second, text)
        return f"{text}.{int(record.msecs):03d}Z"
