"""Which answer each exception gets: one table for the API's exception handlers and the
middlewares alike (project.errors builds the JSON).

An exception is looked up along its class's MRO, most specific class first, as django-ninja
looks up its handlers: `PoolTimeout` is an `OperationalError` without an entry of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db import DataError, OperationalError
from ninja.errors import AuthenticationError, HttpError, ValidationError
from redis.exceptions import RedisError

from comments.cursors import BadCursor
from comments.service import Conflict, Forbidden, Invalid, NotFound
from project.errors import RETRY_AFTER_SECONDS, ErrorAnswer, code_for_status
from project.pgpool.deadline import current_deadline
from project.pgpool.errors import CommitOutcomeUnknown, DeadlineExceeded, PoolTimeout
from routers.scatter import IncompleteScatter
from routers.write_hold import PrimaryUnavailable
from shards.errors import MalformedTenantKey, RoutingError, UnknownShard, UnknownTenant
from shards.fence import TenantStillFenced
from shards.placement import NoShardAcceptsTenants
from shards.scatter_cursor import BadCursor as BadScatterCursor
from sites.service import SiteExists
from sites.throttle import Throttled

logger = logging.getLogger("shardsvc.api")
requests_logger = logging.getLogger("shardsvc.requests")


class UnsupportedMediaType(ValueError):
    """A request body that is not JSON in UTF-8."""


Rule = Callable[[BaseException, str], ErrorAnswer]


def _plain(status: int, code: str) -> Rule:
    """The exception's own text, which is written for the client."""
    return lambda exc, path: ErrorAnswer(status, code, str(exc))


def _fixed(status: int, code: str, message: str) -> Rule:
    return lambda exc, path: ErrorAnswer(status, code, message)


def _http_error(exc: BaseException, path: str) -> ErrorAnswer:
    if isinstance(exc.__cause__, UnsupportedMediaType):
        # ninja turns every parser error into "400 Cannot parse request body", keeping the
        # cause: a body that is not JSON at all is the client's content type, not its syntax.
        return ErrorAnswer(415, "unsupported_media_type", str(exc.__cause__))
    status = exc.status_code if isinstance(exc, HttpError) else 400
    return ErrorAnswer(status, code_for_status(status), str(exc))


def _throttled(exc: BaseException, path: str) -> ErrorAnswer:
    retry_after = exc.retry_after if isinstance(exc, Throttled) else RETRY_AFTER_SECONDS
    return ErrorAnswer(429, "rate_limited", str(exc), retry_after)


def _validation(exc: BaseException, path: str) -> ErrorAnswer:
    errors = exc.errors if isinstance(exc, ValidationError) else []
    details = [
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
        for e in errors
    ]
    return ErrorAnswer(422, "invalid", "; ".join(details)[:2000] or "invalid request")


def _unknown_shard(exc: BaseException, path: str) -> ErrorAnswer:
    logger.info("unknown shard on %s: %s", path, exc)  # names the topology file
    message = exc.public_message if isinstance(exc, UnknownShard) else "unknown shard"
    return ErrorAnswer(422, "invalid", message)


def _unknown_tenant(exc: BaseException, path: str) -> ErrorAnswer:
    key = exc.key if isinstance(exc, UnknownTenant) else "?"
    return ErrorAnswer(404, "unknown_tenant", f"no tenant {key!r}")


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


def _incomplete_scatter(exc: BaseException, path: str) -> ErrorAnswer:
    """Shards that did not answer a read the caller wanted whole: named, worth retrying."""
    failures = exc.failures if isinstance(exc, IncompleteScatter) else []
    requests_logger.warning("503 for %s: %s", path, exc)
    return ErrorAnswer(
        503, "shards_unavailable",
        f"{len(failures)} shard(s) did not answer: "
        + ", ".join(f"{f.shard} ({f.reason})" for f in failures)
        + "; retry, or accept a partial answer",
        RETRY_AFTER_SECONDS,
        extra={"failed_shards": [{"shard": f.shard, "reason": f.reason,
                                  "message": f.public_message} for f in failures]},
    )


def _database_unavailable(exc: BaseException, path: str) -> ErrorAnswer:
    """A database that cannot serve the request right now: 503, worth retrying."""
    requests_logger.warning("503 for %s: %s", path, exc)
    timeout = _timeout_message(exc)
    if timeout is not None:
        return ErrorAnswer(503, "database_timeout", timeout, RETRY_AFTER_SECONDS)
    if isinstance(exc, PoolTimeout | TenantStillFenced | PrimaryUnavailable):
        return ErrorAnswer(503, "database_unavailable", str(exc), RETRY_AFTER_SECONDS)
    if isinstance(exc, CommitOutcomeUnknown):
        # Not "retry shortly": a client that retries blindly may write twice.
        return ErrorAnswer(503, "write_outcome_unknown", str(exc), RETRY_AFTER_SECONDS)
    # The driver's text can carry host names and ports: log it, answer plainly.
    return ErrorAnswer(503, "database_unavailable",
                       "a database needed for this request is unavailable; retry shortly",
                       RETRY_AFTER_SECONDS)


def _data_error(exc: BaseException, path: str) -> ErrorAnswer:
    # Validation should catch these first; the database is the last line.
    logger.warning("data error on %s: %s", path, exc)
    return ErrorAnswer(422, "invalid", "a value was not accepted by the database")


def _routing_error(exc: BaseException, path: str) -> ErrorAnswer:
    logger.error("routing error on %s: %s", path, exc)
    return ErrorAnswer(404, "not_found", "no such resource on this site")


def _redis_error(exc: BaseException, path: str) -> ErrorAnswer:
    # Caches treat Redis failing as a miss; only a caller that cannot work without Redis lets
    # the error through, and that is a 503 worth retrying, not a 500.
    logger.warning("503 for %s: Redis: %s", path, exc)
    return ErrorAnswer(503, "cache_unavailable",
                       "Redis, needed for this request, is unavailable; retry shortly",
                       RETRY_AFTER_SECONDS)


def _unexpected(exc: BaseException, path: str) -> ErrorAnswer:
    logger.error("unhandled error on %s", path, exc_info=exc)
    return ErrorAnswer(500, "internal", "internal error; it has been logged")


RULES: dict[type[BaseException], Rule] = {
    # the client's request
    HttpError: _http_error,
    ValidationError: _validation,
    AuthenticationError: _fixed(
        401, "unauthorized",
        "missing or wrong credentials: send the site's X-Api-Key (ops: X-Ops-Token)"),
    RequestDataTooBig: _fixed(413, "too_large", "request body too large"),
    Throttled: _throttled,
    MalformedTenantKey: _plain(400, "malformed_tenant"),
    UnknownTenant: _unknown_tenant,
    # the application's answers
    NotFound: _plain(404, "not_found"),
    Forbidden: _plain(403, "forbidden"),
    Invalid: _plain(422, "invalid"),
    BadCursor: _plain(400, "bad_cursor"),
    BadScatterCursor: _plain(400, "bad_cursor"),
    Conflict: _plain(409, "conflict"),
    SiteExists: _plain(409, "conflict"),
    UnknownShard: _unknown_shard,
    DataError: _data_error,
    RoutingError: _routing_error,
    # what the service depends on, unavailable for now
    IncompleteScatter: _incomplete_scatter,
    OperationalError: _database_unavailable,
    TenantStillFenced: _database_unavailable,
    NoShardAcceptsTenants: _plain(503, "unavailable"),
    RedisError: _redis_error,
    Exception: _unexpected,
}


def answer_for(exc: BaseException, path: str = "") -> ErrorAnswer:
    """The answer to `exc`, raised while serving `path` (named in the log lines)."""
    for cls in type(exc).__mro__:
        rule = RULES.get(cls)
        if rule is not None:
            return rule(exc, path)
    return _unexpected(exc, path)


def is_database_unavailable(exc: BaseException) -> bool:
    """A database error the middlewares answer with 503 (any other is the view's to answer)."""
    return isinstance(exc, OperationalError | TenantStillFenced)
