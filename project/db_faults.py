"""What a database error says about the server behind it: gone, read-only, or neither.

A failover shows itself to a client in a few ways, all measured through PgBouncer here:
- the old primary, demoted or not yet fenced off, refuses writes with SQLSTATE 25006
  (read_only_sql_transaction), as does a primary with ``default_transaction_read_only``;
- a stopped server: PgBouncer answers 08P01 ("query_wait_timeout" for a query that was
  waiting, then "server login has been failing, try again later" until it connects again);
  a direct connection is refused (no SQLSTATE at all);
- a server shutting down or starting: 57P01 (admin_shutdown), 57P02 (crash_shutdown),
  57P03 (cannot_connect_now);
- a connection cut under a query: the driver's "server closed the connection unexpectedly",
  again with no SQLSTATE.

None of these says whether a statement already sent was applied. That is for the caller to
know: before COMMIT nothing was (the transaction dies with its connection), during a COMMIT
anything may have been, which `CommitOutcomeUnknown` (``errors.py``) reports.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import psycopg

# psycopg's message when one command got more results than it can have.
_GARBLED = re.compile(r"received \d+ results from command ")

READ_ONLY = "25006"
# Server shutting down, crashed, or not yet accepting connections.
SHUTDOWN_STATES = frozenset({"57P01", "57P02", "57P03"})


def driver_errors(exc: BaseException) -> Iterator[psycopg.Error]:
    """The driver's errors behind `exc` (Django re-raises them ``from`` the original)."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, psycopg.Error):
            yield cause
        cause = cause.__cause__


def is_connection_lost(exc: BaseException) -> bool:
    """The server (or PgBouncer's link to it) went away or could not be reached.

    Only the driver's own errors count: the pool's timeout and the request's deadline are
    ``OperationalError`` too, but they say nothing about the server.
    """
    for error in driver_errors(exc):
        state = error.sqlstate
        if state is None:
            # Refused, reset, timed out while connecting, closed under a query; or the
            # server's termination notice read as a second result of the statement (measured
            # when Patroni stops a primary: "received 2 results from command 'BEGIN'"). A
            # statement that may have committed never gets here: the commit paths turn those
            # into CommitOutcomeUnknown first.
            return (isinstance(error, psycopg.OperationalError)
                    or is_garbled_answer(error))
        if _lost(state):
            return True
    return False


def is_garbled_answer(error: psycopg.Error) -> bool:
    """psycopg's own error for an answer it cannot read, as a connection cut by the server
    gives (no SQLSTATE): "received 2 results from command 'BEGIN'"."""
    return (isinstance(error, psycopg.InternalError) and error.sqlstate is None
            and _GARBLED.match(str(error)) is not None)


def is_read_only(exc: BaseException) -> bool:
    """The server refused a write because it accepts none (a standby, a demoted primary)."""
    return any(error.sqlstate == READ_ONLY for error in driver_errors(exc))


def unavailable_reason(exc: BaseException) -> str | None:
    """Why a primary could not take a write ("read-only", "unreachable"), or None when the
    error is about the write itself (a constraint, a timeout, a bug)."""
    if is_read_only(exc):
        return "read-only"
    if is_connection_lost(exc):
        return "unreachable"
    return None


def commit_outcome_unknown(exc: BaseException) -> bool:
    """A COMMIT (or an autocommit write) failed without the server refusing it: the connection
    was lost, or the driver got an answer it cannot read (measured: a backend terminated during
    COMMIT, through PgBouncer, gave psycopg "received 2 results from command 'COMMIT'", with no
    SQLSTATE). Only the server's own error (a constraint, a serialization failure, a read-only
    server) says nothing was committed."""
    errors = list(driver_errors(exc))
    refused = any(error.sqlstate is not None and not _lost(error.sqlstate) for error in errors)
    return bool(errors) and not refused


def _lost(sqlstate: str) -> bool:
    return sqlstate.startswith("08") or sqlstate in SHUTDOWN_STATES
