"""What one check of one replica found.

LSNs are 64-bit ints here (`shards.lsn.parse_lsn("16/B374D848")`), so causal tokens compare as
numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass


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
