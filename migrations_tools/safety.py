"""How each migration runs on a live database: bounded lock waits, bounded statements, retries.

A DDL statement that needs an ACCESS EXCLUSIVE lock queues behind any open transaction on its
table, and every later query on that table queues behind the DDL: one forgotten `idle in
transaction` session would stall the application's reads and writes for as long as the DDL waits.
So each migration connection carries `lock_timeout` (the longest the application can be queued
behind a waiting DDL) and `statement_timeout` (the longest a statement may run); a migration that
cannot take its locks in time is rolled back and tried again after a growing pause, which lets
the application's queued queries through. The settings are startup parameters of a direct
connection (never through PgBouncer, where session settings leak to other clients), so they hold
for every statement of the migration, its signal handlers and its deferred SQL.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.db.migrations.migration import Migration

# PostgreSQL error codes worth another attempt: the migration rolled back without changing
# anything, and waiting a little lets the conflicting transaction finish.
LOCK_NOT_AVAILABLE = "55P03"  # lock_timeout expired
DEADLOCK_DETECTED = "40P01"
RETRYABLE_SQLSTATES = frozenset({LOCK_NOT_AVAILABLE, DEADLOCK_DETECTED})
QUERY_CANCELED = "57014"  # statement_timeout expired

_UNITS = {"ms": 0.001, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|sec|min|m|h)?\s*$")


def parse_duration(text: str) -> float:
    """Seconds from "500ms", "5s", "15min", "2h" or a bare number of seconds."""
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ValueError(
            f"{text!r} is not a duration: write a number with an optional unit, "
            "e.g. 500ms, 5s, 15min, 2h"
        )
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def format_duration(seconds: float) -> str:
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 120:
        return f"{seconds:g}s"
    return f"{seconds / 60:g}min"


@dataclass(frozen=True)
class ExecutionPolicy:
    """Timeouts and retries for every migration; defaults suit a busy OLTP table."""

    lock_timeout: float = 3.0
    statement_timeout: float = 15 * 60.0
    retries: int = 5
    retry_delay: float = 1.0
    max_retry_delay: float = 30.0
    jitter: float = 0.2  # +-20%: shards retrying in lockstep would collide again

    def __post_init__(self) -> None:
        if self.lock_timeout <= 0:
            # 0 means "wait forever" to PostgreSQL: the very stall this module exists to prevent.
            raise ValueError(
                "lock_timeout must be above 0: without it a DDL waiting for its lock queues "
                "every query on the table behind it"
            )
        if self.statement_timeout < 0:
            raise ValueError("statement_timeout must be 0 (no limit) or more")
        if self.retries < 0:
            raise ValueError("retries must be 0 or more")
        if self.retry_delay < 0 or self.max_retry_delay < 0:
            raise ValueError("retry delays must be 0 or more")

    def startup_options(self) -> str:
        """libpq `options`: applied by the server to the session before any statement."""
        return (
            f"-c lock_timeout={_ms(self.lock_timeout)} "
            f"-c statement_timeout={_ms(self.statement_timeout)}"
        )

    def base_delay(self, retry: int) -> float:
        """Pause before retry number `retry` (1-based): doubling, capped."""
        return min(self.retry_delay * 2 ** (retry - 1), self.max_retry_delay)

    def delay(self, retry: int) -> float:
        base = self.base_delay(retry)
        return max(0.0, base * random.uniform(1 - self.jitter, 1 + self.jitter))

    def worst_case_lock_wait(self) -> float:
        """Longest a migration can spend failing to take its locks before it gives up."""
        attempts = self.retries + 1
        pauses = sum(self.base_delay(r) for r in range(1, self.retries + 1))
        return attempts * self.lock_timeout + pauses * (1 + self.jitter)

    def describe(self) -> str:
        statement = format_duration(self.statement_timeout) if self.statement_timeout else "off"
        return (
            f"lock_timeout {format_duration(self.lock_timeout)}, statement_timeout {statement}, "
            f"{self.retries} retries from {format_duration(self.retry_delay)}"
        )


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def error_chain(exc: BaseException) -> Iterator[BaseException]:
    """`exc`, then what caused it (explicitly or while it was being handled), each once."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def sqlstate(exc: BaseException) -> str | None:
    """The PostgreSQL error code behind an exception, through Django's wrapping."""
    for item in error_chain(exc):
        code = getattr(item, "sqlstate", None)
        if code:
            return str(code)
    return None


def is_retryable(exc: BaseException) -> bool:
    return sqlstate(exc) in RETRYABLE_SQLSTATES


def error_summary(exc: BaseException) -> str:
    """One line for a summary table: the database's message without LINE/HINT details."""
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0]


OLDEST_TRANSACTIONS_SQL = """
SELECT pid, usename, state, extract(epoch FROM now() - xact_start)::float8,
       left(regexp_replace(query, '\\s+', ' ', 'g'), 100)
FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND xact_start IS NOT NULL
  AND xact_start < now() - make_interval(secs => %s)
ORDER BY xact_start
LIMIT 3
"""


def describe_old_transactions(cursor: Any, older_than: float) -> str:
    """Who probably held the lock: the oldest transactions open longer than `older_than`."""
    cursor.execute(OLDEST_TRANSACTIONS_SQL, [older_than])
    rows = cursor.fetchall()
    if not rows:
        return ""
    parts = [
        f"pid {pid} ({user}, {state}, open {age:.0f}s: {query or '?'})"
        for pid, user, state, age, query in rows
    ]
    return "oldest open transactions: " + "; ".join(parts)


def explain_failure(exc: BaseException, connection: BaseDatabaseWrapper, migration: Migration,
                    policy: ExecutionPolicy, attempts: int, elapsed: float, *,
                    blockers: str = "") -> str:
    """The error of a migration that failed: what happened to it, and what to do."""
    message = error_summary(exc)
    if is_retryable(exc) and not migration.atomic:
        return (
            f"{message}; not retried: the migration is not atomic (atomic = False), so part of "
            "it may be applied. Check what exists, make it idempotent, then rerun"
        )
    if is_retryable(exc):
        oldest = ""
        try:
            with connection.cursor() as cursor:
                oldest = describe_old_transactions(cursor, policy.lock_timeout)
        except Exception:  # diagnostics only: the connection may be gone
            oldest = ""
        seen = "; ".join(part for part in (blockers, oldest) if part)
        detail = f" ({seen})" if seen else ""
        return (
            f"{message}: could not take its locks within lock_timeout "
            f"{format_duration(policy.lock_timeout)} in {attempts} attempt(s) over "
            f"{elapsed:.1f}s; each attempt was rolled back, nothing of it is applied{detail}. "
            "End or wait out the long transaction on that table, then rerun"
        )
    if sqlstate(exc) == QUERY_CANCELED:
        return (
            f"{message} (statement_timeout {format_duration(policy.statement_timeout)}); "
            "the migration was rolled back. Raise --statement-timeout, or split the work "
            "(batches, CONCURRENTLY)"
        )
    return message
