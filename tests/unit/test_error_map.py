"""The one error map (project/error_map.py) and the one error body (project/errors.py)."""

from __future__ import annotations

import json
from typing import Any

import psycopg
import pytest
from django.core.exceptions import RequestDataTooBig
from django.db import DataError, OperationalError
from ninja.errors import AuthenticationError, HttpError, ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError

from comments.cursors import BadCursor
from comments.service import Conflict, Forbidden, Invalid, NotFound
from project.api import api
from project.error_map import RULES, UnsupportedMediaType, answer_for, is_database_unavailable
from project.errors import ErrorAnswer, code_for_status, error, error_response
from project.pgpool.deadline import Deadline, deadline_scope
from project.pgpool.errors import CommitOutcomeUnknown, DeadlineExceeded, pool_timeout
from routers.scatter import IncompleteScatter, ShardFailure
from routers.write_hold import PrimaryUnavailable
from shards.errors import MalformedTenantKey, NoTenantContext, UnknownShard, UnknownTenant
from shards.fence import TenantStillFenced
from shards.placement import NoShardAcceptsTenants
from shards.redisguard import RedisUnavailable
from shards.scatter_cursor import BadCursor as BadScatterCursor
from sites.service import SiteExists
from sites.throttle import Throttled

DRIVER_TEXT = 'connection to server at "10.0.0.5", port 6432 failed'
PLAIN_503 = "a database needed for this request is unavailable; retry shortly"


def http_error_from_parser() -> HttpError:
    try:
        raise HttpError(400, "Cannot parse request body") from UnsupportedMediaType("not JSON")
    except HttpError as exc:
        return exc


def with_sqlstate(sqlstate: str) -> OperationalError:
    cause = psycopg.errors.lookup(sqlstate)("canceled")
    error = OperationalError("wrapped")
    error.__cause__ = cause
    return error


@pytest.mark.parametrize(("exc", "expected"), [
    (HttpError(405, "no"), ErrorAnswer(405, "method_not_allowed", "no")),
    (HttpError(404, "gone"), ErrorAnswer(404, "not_found", "gone")),
    (HttpError(418, "teapot"), ErrorAnswer(418, "error", "teapot")),
    (http_error_from_parser(), ErrorAnswer(415, "unsupported_media_type", "not JSON")),
    (AuthenticationError(), ErrorAnswer(
        401, "unauthorized",
        "missing or wrong credentials: send the site's X-Api-Key (ops: X-Ops-Token)")),
    (ValidationError([{"loc": ("body", "payload", "url"), "msg": "too long"}]),
     ErrorAnswer(422, "invalid", "body.payload.url: too long")),
    (ValidationError([]), ErrorAnswer(422, "invalid", "invalid request")),
    (RequestDataTooBig("x"), ErrorAnswer(413, "too_large", "request body too large")),
    (Throttled("slow down", 7), ErrorAnswer(429, "rate_limited", "slow down", 7)),
    (MalformedTenantKey("bad slug"), ErrorAnswer(400, "malformed_tenant", "bad slug")),
    (UnknownTenant("nope"), ErrorAnswer(404, "unknown_tenant", "no tenant 'nope'")),
    (NotFound("no thread 3"), ErrorAnswer(404, "not_found", "no thread 3")),
    (Forbidden("not yours"), ErrorAnswer(403, "forbidden", "not yours")),
    (Invalid("blank"), ErrorAnswer(422, "invalid", "blank")),
    (BadCursor("bad cursor"), ErrorAnswer(400, "bad_cursor", "bad cursor")),
    (Conflict("taken"), ErrorAnswer(409, "conflict", "taken")),
    (SiteExists("exists"), ErrorAnswer(409, "conflict", "exists")),
    (UnknownShard("unknown shard 'x' in /etc/topology.toml", name="x", known=("shard_0",)),
     ErrorAnswer(422, "invalid", "unknown shard 'x'; known shards: shard_0")),
    (DataError("value too long"),
     ErrorAnswer(422, "invalid", "a value was not accepted by the database")),
    (NoTenantContext("comments.Thread"),
     ErrorAnswer(404, "not_found", "no such resource on this site")),
    (NoShardAcceptsTenants("every shard is closed"),
     ErrorAnswer(503, "unavailable", "every shard is closed")),
    (OperationalError(DRIVER_TEXT), ErrorAnswer(503, "database_unavailable", PLAIN_503, 2)),
    (pool_timeout("shard_0", 4, 1.5), ErrorAnswer(
        503, "database_unavailable", str(pool_timeout("shard_0", 4, 1.5)), 2)),
    (TenantStillFenced("alpha is still being moved"),
     ErrorAnswer(503, "database_unavailable", "alpha is still being moved", 2)),
    (PrimaryUnavailable("the primary of shard_0 did not take this write for 6.0 s"),
     ErrorAnswer(503, "database_unavailable",
                 "the primary of shard_0 did not take this write for 6.0 s", 2)),
    (CommitOutcomeUnknown("shard_0"),
     ErrorAnswer(503, "write_outcome_unknown", str(CommitOutcomeUnknown("shard_0")), 2)),
    (RedisUnavailable("breaker open"), ErrorAnswer(
        503, "cache_unavailable",
        "Redis, needed for this request, is unavailable; retry shortly", 2)),
    (RedisConnectionError("refused"), ErrorAnswer(
        503, "cache_unavailable",
        "Redis, needed for this request, is unavailable; retry shortly", 2)),
    (KeyError("secret detail"),
     ErrorAnswer(500, "internal", "internal error; it has been logged")),
])
def test_each_exception_gets_its_answer(exc: Exception, expected: ErrorAnswer) -> None:
    assert answer_for(exc, "/api/x") == expected


def test_the_drivers_text_never_reaches_the_client() -> None:
    answer = answer_for(OperationalError(DRIVER_TEXT))
    assert "10.0.0.5" not in answer.message and "6432" not in answer.message


@pytest.mark.parametrize(("sqlstate", "names"), [
    ("55P03", "lock_timeout"),
    ("57014", "statement_timeout"),
])
def test_server_side_timeouts_are_database_timeouts(sqlstate: str, names: str) -> None:
    answer = answer_for(with_sqlstate(sqlstate))
    assert (answer.status, answer.code, answer.retry_after) == (503, "database_timeout", 2)
    assert names in answer.message


def test_a_cut_connection_past_the_deadline_names_the_deadline() -> None:
    deadline = Deadline(3.0)
    deadline.expired = True
    with deadline_scope(deadline):
        answer = answer_for(OperationalError("server closed the connection unexpectedly"))
    assert (answer.status, answer.code) == (503, "database_timeout")
    assert answer.message == str(deadline.error())
    assert "deadline of 3 s" in answer.message


def test_deadline_exceeded_outside_a_deadline_keeps_its_own_text() -> None:
    answer = answer_for(DeadlineExceeded("past the deadline"))
    assert answer == ErrorAnswer(503, "database_timeout", "past the deadline", 2)


def test_database_unavailability_is_what_the_middlewares_answer() -> None:
    assert is_database_unavailable(OperationalError("down"))
    assert is_database_unavailable(pool_timeout("default", 1, 1.0))
    assert is_database_unavailable(TenantStillFenced("moving"))
    assert not is_database_unavailable(DataError("bad value"))
    assert not is_database_unavailable(ValueError("bad"))


def test_the_api_answers_every_mapped_exception_from_the_map() -> None:
    handlers: dict[type, Any] = api._exception_handlers
    for exception in RULES:
        assert handlers[exception].__name__ == "on_error", exception


def test_error_response_is_the_json_error_shape() -> None:
    response = error_response(ErrorAnswer(503, "database_unavailable", "later", 2))
    assert response.status_code == 503
    assert response["Content-Type"] == "application/json; charset=utf-8"
    assert response["Retry-After"] == "2"
    assert json.loads(response.content) == {"error": "database_unavailable", "message": "later"}
    plain = error(404, "not_found", "nothing here")
    assert not plain.has_header("Retry-After")
    assert json.loads(plain.content) == {"error": "not_found", "message": "nothing here"}


@pytest.mark.parametrize(("status", "code"), [
    (400, "bad_request"), (413, "too_large"), (414, "uri_too_long"),
    (431, "headers_too_large"), (500, "internal"), (599, "error"),
])
def test_one_code_per_status(status: int, code: str) -> None:
    assert code_for_status(status) == code



def test_an_incomplete_scatter_names_its_shards_and_asks_for_a_retry() -> None:
    failures = [ShardFailure("shard_1", "timeout", "host 10.0.0.5:6432 hung"),
                ShardFailure("shard_2", "unavailable", "connection refused")]
    answer = answer_for(IncompleteScatter(failures))
    assert (answer.status, answer.code, answer.retry_after) == (503, "shards_unavailable", 2)
    assert "shard_1 (timeout), shard_2 (unavailable)" in answer.message
    body = json.loads(answer.body())
    assert body["failed_shards"] == [
        {"shard": "shard_1", "reason": "timeout",
         "message": "the shard did not answer within the time allowed"},
        {"shard": "shard_2", "reason": "unavailable",
         "message": "the shard's database is unavailable"},
    ]
    assert "10.0.0.5" not in answer.body().decode()  # details stay in the log
    # An OperationalError, so the middlewares answer it too (with the same rule).
    assert is_database_unavailable(IncompleteScatter(failures))


def test_a_cross_shard_cursor_that_was_not_issued_is_a_400() -> None:
    answer = answer_for(BadScatterCursor("not a cursor of this query"))
    assert answer == ErrorAnswer(400, "bad_cursor", "not a cursor of this query")
