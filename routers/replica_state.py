"""What one check of one replica found, and the WAL positions it is measured in.

LSNs are 64-bit ints here (`parse_lsn("16/B374D848")`), so causal tokens compare as numbers.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
_LSN_MAX = (1 << 64) - 1


def parse_lsn(text: str) -> int:
    """A pg_lsn as PostgreSQL prints it ("16/B374D848") -> a 64-bit int ((X << 32) + Y)."""
    match = _LSN_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid LSN {text!r}: expected two hex numbers of up to 8 digits as X/Y, "
            "as pg_current_wal_lsn()::text prints it (e.g. '16/B374D848')"
        )
    return (int(match[1], 16) << 32) + int(match[2], 16)


def format_lsn(value: int) -> str:
    """A 64-bit int -> the pg_lsn text PostgreSQL prints ("16/B374D848")."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _LSN_MAX:
        raise ValueError(f"invalid LSN {value!r}: expected an int from 0 to 2**64 - 1")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


@dataclass(frozen=True)
class ReplicaState:
    """One check of one replica. Immutable: each check replaces the previous state whole."""

    alias: str
    cluster: str
    reachable: bool
    in_recovery: bool
    replay_lsn: int
    lag_seconds: float  # math.inf when the server cannot tell (see replica_probe.CHECK_QUERY)
    checked_at: float  # time.monotonic() when the answer (or the failure) came
    error: str | None = None


def failed_state(alias: str, cluster: str, error: str) -> ReplicaState:
    """The state of a replica that could not be checked (or that a request saw fail), now."""
    return ReplicaState(
        alias=alias,
        cluster=cluster,
        reachable=False,
        in_recovery=False,
        replay_lsn=0,
        lag_seconds=math.inf,
        checked_at=time.monotonic(),
        error=error,
    )


def describe_unhealthy(state: ReplicaState, max_lag: float) -> str | None:
    """Why this state is unhealthy (apart from min_lsn and staleness), or None if healthy."""
    if not state.reachable:
        return state.error or "unreachable"
    if not state.in_recovery:
        return "not in recovery (promoted?): it no longer follows its primary"
    if not state.lag_seconds <= max_lag:
        return f"lag {state.lag_seconds:.2f} s > max_lag {max_lag:g} s"
    return None


def error_text(exc: BaseException) -> str:
    # psycopg messages span lines ("... failed: Connection refused\n\tIs the server running");
    # one line keeps logs and states greppable. Messages name host and port, never a password.
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
