"""What one check of one replica found, and the state the router reads from it.

LSNs are 64-bit ints here (`shards.lsn.parse_lsn("16/B374D848")`), so causal tokens compare as
numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from routers.wal_lag import WalTimeline, bytes_behind


@dataclass(frozen=True)
class ReplicaPositions:
    """What one probe of a replica read (`replica_probe.REPLICA_QUERY`)."""

    in_recovery: bool
    replay_lsn: int | None  # None: nothing replayed since startup
    receive_lsn: int | None  # None: not streaming (yet)
    answered_at: float  # time.monotonic()
    timeline: int | None = None  # of the WAL it receives; None: not streaming


@dataclass(frozen=True)
class ReplicaState:
    """One check of one replica. Immutable: each check replaces the previous state whole."""

    alias: str
    cluster: str
    reachable: bool
    in_recovery: bool
    replay_lsn: int
    lag_seconds: float  # from WAL positions (routers.wal_lag); math.inf: nothing replayed yet
    checked_at: float  # time.monotonic() when the answer (or the failure) came
    error: str | None = None
    # WAL bytes the replica has not replayed: the furthest position its cluster is known to
    # have reached (the primary's current LSN) minus replay_lsn; 0 when caught up.
    lag_bytes: int = 0
    # The timeline of the WAL it last received (0: never seen streaming). Positions compare
    # only along one history: see ReplicaHealth.usable_replicas.
    timeline: int = 0


def state_from_positions(alias: str, cluster: str, found: ReplicaPositions,
                         timeline: WalTimeline, *, known_timeline: int = 0,
                         as_of: float | None = None) -> ReplicaState:
    """A reachable replica's state: lag measured against its cluster's WAL timeline (of
    positions over time), which already holds the replica's own receive position.
    `known_timeline`: the PostgreSQL timeline it was last seen receiving, kept while it does
    not stream (only streaming moves a standby to another timeline). `as_of`: the moment its
    lag is taken at (default: when it answered)."""
    replay = found.replay_lsn
    if replay is None:
        lag, behind = math.inf, 0  # nothing replayed since startup: cannot tell
    else:
        lag = timeline.lag_seconds(replay, found.answered_at if as_of is None else as_of)
        reference = timeline.latest
        behind = bytes_behind(reference, replay) if reference is not None else 0
    return ReplicaState(
        alias=alias,
        cluster=cluster,
        reachable=True,
        in_recovery=found.in_recovery,
        replay_lsn=replay or 0,
        lag_seconds=lag,
        lag_bytes=behind,
        checked_at=found.answered_at,
        timeline=found.timeline or known_timeline,
    )


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
