"""Reading and checking the pool's OPTIONS keys of one ``DATABASES`` entry.

Everything is checked when the wrapper is built, so a bad value fails at the first use of the
alias with a message naming the alias and the key, not as a ``TypeError`` deep in a request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from psycopg import IsolationLevel

# Keys this backend reads; they must never reach psycopg.connect(), which would reject them.
POOL_KEYS = (
    "MAX_CONNS",
    "REUSE_CONNS",
    "POOL_TIMEOUT",
    "CHECK_IDLE_AFTER",
    "POOLER",
    "STATEMENT_TIMEOUT",
    "LOCK_TIMEOUT",
)

PGBOUNCER_TRANSACTION = "pgbouncer-transaction"
# A typo here would silently switch off the session-state checks below, so unknown values fail.
POOLERS = ("direct", "pgbouncer-session", PGBOUNCER_TRANSACTION)


@dataclass(frozen=True)
class PoolOptions:
    max_conns: int = 10
    reuse_conns: int = 10
    pool_timeout: float = 5.0
    check_idle_after: float = 30.0
    pooler: str | None = None
    isolation_level: IsolationLevel | None = None
    assume_role: str | None = None
    # Seconds, 0 = no limit; applied with SET LOCAL per transaction (see timeouts.py).
    statement_timeout: float = 0.0
    lock_timeout: float = 0.0

    @classmethod
    def from_settings(cls, alias: str, options: Mapping[str, Any]) -> PoolOptions:
        max_conns = _number(alias, options, "MAX_CONNS", 10, minimum=1, integer=True)
        # 0 is allowed: close every connection on return (nothing kept idle).
        reuse = _number(alias, options, "REUSE_CONNS", max_conns, minimum=0, integer=True)
        timeout = _number(alias, options, "POOL_TIMEOUT", 5.0, minimum=0, strict=True)
        # 0 is allowed: SELECT 1 on every checkout, geventpool's behaviour.
        check_after = _number(alias, options, "CHECK_IDLE_AFTER", 30.0, minimum=0)
        statement_timeout = _number(alias, options, "STATEMENT_TIMEOUT", 0.0, minimum=0)
        lock_timeout = _number(alias, options, "LOCK_TIMEOUT", 0.0, minimum=0)

        pooler = options.get("POOLER")
        if pooler is not None and pooler not in POOLERS:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS']['POOLER'] is {pooler!r}; use one of "
                f"{', '.join(repr(p) for p in POOLERS)}, or leave it out for a direct connection."
            )

        role = options.get("assume_role") or None
        if role and pooler == PGBOUNCER_TRANSACTION:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS'] sets 'assume_role' behind PgBouncer "
                "transaction pooling: SET ROLE is session state and leaks across clients that "
                "share a server connection (other clients then run as that role). Remove "
                "'assume_role' and use a per-user pool instead: a PgBouncer database entry "
                "with its own user, and that user in this DATABASES entry."
            )

        if options.get("prepare_threshold") is not None:
            raise ImproperlyConfigured(
                f"DATABASES[{alias!r}]['OPTIONS'] sets 'prepare_threshold'; remove it. "
                "PgBouncer 1.18 has no protocol-level prepared statements, so prepared "
                "statements fail as soon as two clients share a server connection."
            )

        isolation_level = None
        if "isolation_level" in options:
            try:
                isolation_level = IsolationLevel(options["isolation_level"])
            except ValueError:
                raise ImproperlyConfigured(
                    f"DATABASES[{alias!r}]['OPTIONS']['isolation_level'] is "
                    f"{options['isolation_level']!r}; use one of the psycopg.IsolationLevel "
                    "values."
                ) from None

        return cls(
            max_conns=int(max_conns),
            reuse_conns=int(reuse),
            pool_timeout=float(timeout),
            check_idle_after=float(check_after),
            pooler=pooler,
            isolation_level=isolation_level,
            assume_role=role,
            statement_timeout=float(statement_timeout),
            lock_timeout=float(lock_timeout),
        )


def _number(
    alias: str,
    options: Mapping[str, Any],
    key: str,
    default: float,
    *,
    minimum: float,
    integer: bool = False,
    strict: bool = False,
) -> float:
    value = options.get(key, default)
    # bool is an int subclass: MAX_CONNS=True is a mistake, not 1. inf/nan would break waits.
    valid = (
        isinstance(value, int if integer else (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and (value > minimum if strict else value >= minimum)
    )
    if not valid:
        kind = "an integer" if integer else "a number"
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ImproperlyConfigured(
            f"DATABASES[{alias!r}]['OPTIONS'][{key!r}] must be {kind} {bound}, got {value!r}."
        )
    return value
