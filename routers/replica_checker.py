"""The replica health checker: a native OS thread per worker that checks every replica of
every cluster, and reads every primary's WAL position, concurrently (`replica_probe`), and keeps
each replica's latest `ReplicaState`.

The checks run outside the worker's gevent loop (`routers.native_threads` says why and how), so
a loop saturated by CPU-heavy requests neither delays them nor makes them time out: a replica is
marked down only on evidence about it (connection refused or reset, an error, or no answer
within check_timeout measured by a thread the loop cannot hold up). Lag comes from WAL
positions against the primary's (`routers.wal_lag`), so an idle shard's caught-up replica reads
0 however long the idle, also while the first write after it replays.

Routers call `usable_replicas()`, which only reads in-memory state: no SQL, no settings, no
I/O per query. A request that sees a replica fail calls `mark_failed()`, which skips it at once.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import weakref
from collections.abc import Callable

from routers.native_threads import NativeThread, native_lock
from routers.replica_probe import (
    Check,
    Connections,
    PrimaryPosition,
    probe_primary,
    probe_replica,
    unstick,
)
from routers.replica_runner import CheckerThread
from routers.replica_state import (
    ReplicaPositions,
    ReplicaState,
    describe_unhealthy,
    error_text,
    failed_state,
    state_from_positions,
)
from routers.wal_lag import DEFAULT_HORIZON, WalTimeline
from shards.errors import UnknownShard
from shards.lsn import format_lsn
from shards.runtime import Conf
from shards.topology import Server, ShardMap

logger = logging.getLogger("shardsvc.replicas")


class ReplicaHealth(CheckerThread):
    """Tracks reachability, recovery, replay LSN and lag of every replica in a ShardMap.

    One per worker process (built by the runtime registry: `routers.replicas.get_replica_health()`).
    `usable_replicas()` is safe to call from any thread or greenlet: states are immutable and
    replaced whole, so readers take no lock. The lock that writers take is a native one, held
    for a few statements only.
    """

    def __init__(
        self,
        shard_map: ShardMap,
        *,
        interval: float = Conf.replica_check_interval,
        max_lag: float = Conf.replica_max_lag,
        stale_after: float = 3.0,
        check_timeout: float = 1.0,
    ) -> None:
        if not isinstance(shard_map, ShardMap):
            raise TypeError(f"shard_map must be a ShardMap, got {type(shard_map).__name__}")
        _check_number("interval", interval, minimum=0.0, inclusive=False)
        _check_number("max_lag", max_lag, minimum=0.0, inclusive=True)
        _check_number("stale_after", stale_after, minimum=0.0, inclusive=False)
        _check_number("check_timeout", check_timeout, minimum=0.0, inclusive=False)
        if stale_after <= interval:
            raise ValueError(
                f"stale_after ({stale_after:g} s) must be longer than interval ({interval:g} s), "
                "else every replica reads as stale between two checks"
            )
        self.shard_map = shard_map
        self.interval = float(interval)
        self.max_lag = float(max_lag)
        self.stale_after = float(stale_after)
        self.check_timeout = float(check_timeout)

        self._states: dict[str, ReplicaState] = {}
        # cluster -> when each higher WAL position was first seen (the primary's, or a
        # replica's receive position): what lag is measured against.
        self._timelines: dict[str, WalTimeline] = {}
        # cluster -> the highest PostgreSQL timeline seen on its primary or a replica.
        self._newest_tli: dict[str, int] = {}
        # cluster -> when its primary last answered a sample (time.monotonic()).
        self._primary_seen: dict[str, float] = {}
        self._set_servers(shard_map)
        # alias -> monotonic time of the last mark_failed(): checks begun before it cannot
        # restore the replica, since they may have read it just before the failure.
        self._failed_at: dict[str, float] = {}
        self._inflight: dict[str, Check] = {}
        self._lock = native_lock()
        self._pid = os.getpid()
        self._thread: NativeThread | None = None
        self._thread_pid: int | None = None
        self._res = Connections()
        self.after_round = None
        # Closes the connections and stops the thread when the object is dropped without stop().
        self._finalizer = weakref.finalize(self, self._res.close)
        self._track_forks()

    def _set_servers(self, shard_map: ShardMap) -> None:
        # Each table is replaced whole: readers on other threads see the old or the new one.
        self.shard_map = shard_map
        self._replicas: dict[str, tuple[Server, ...]] = {
            c.name: c.replicas for c in shard_map.clusters
        }
        self._cluster_of: dict[str, str] = {
            s.alias: c.name for c in shard_map.clusters for s in c.replicas
        }
        self._primaries: dict[str, Server] = {c.name: c.primary for c in shard_map.clusters}
        self._timelines = {
            c.name: self._timelines.get(c.name) or WalTimeline(max(DEFAULT_HORIZON,
                                                                   4 * self.max_lag))
            for c in shard_map.clusters
        }

    def retarget(self, shard_map: ShardMap) -> None:
        """Check the servers of `shard_map` from now on (the topology file changed): new
        replicas are checked in the next round, removed ones forgotten, the states of the
        others kept. A server whose DSN changed is checked anew."""
        if not isinstance(shard_map, ShardMap):
            raise TypeError(f"shard_map must be a ShardMap, got {type(shard_map).__name__}")
        new = {s.alias: s for s in shard_map.servers()}
        changed = {s.alias for s in self.shard_map.servers() if new.get(s.alias) != s}
        with self._lock:
            self._set_servers(shard_map)
            for alias in changed:
                self._states.pop(alias, None)
                self._failed_at.pop(alias, None)
            busy = set(self._inflight)
        for alias in changed - busy:
            conn = self._res.conns.pop(alias, None)
            if conn is not None:
                with contextlib.suppress(Exception):
                    conn.close()

    def __repr__(self) -> str:
        running = self._thread is not None and self._thread_pid == os.getpid()
        return (
            f"<ReplicaHealth {len(self._cluster_of)} replicas interval={self.interval:g}s "
            f"max_lag={self.max_lag:g}s {'running' if running else 'stopped'}>"
        )

    # ----- reads: the routers' hot path, no I/O ------------------------------------------------

    def state(self, alias: str) -> ReplicaState | None:
        """The latest state of a replica, or None if it was never checked (or is not a replica)."""
        return self._states.get(alias)

    def states(self) -> dict[str, ReplicaState]:
        """A snapshot of every replica's latest state, by alias."""
        return dict(self._states)

    def usable_replicas(self, cluster: str, *, min_lsn: int = 0) -> list[str]:
        """Aliases of `cluster`'s replicas fit to serve a read that must see `min_lsn`.

        Fit: reachable, in recovery, lag <= max_lag, replayed past min_lsn, and checked within
        stale_after seconds (a checker that stopped running must not keep vouching for them).
        Topology order; an empty list means "read from the primary".
        """
        try:
            replicas = self._replicas[cluster]
        except KeyError:
            raise UnknownShard(
                f"unknown cluster {cluster!r}: the shard map has "
                f"{', '.join(self._replicas)}. Pass a cluster name, not a replica alias."
            ) from None
        oldest = time.monotonic() - self.stale_after
        newest_tli = self._newest_tli.get(cluster, 0)
        usable = []
        for server in replicas:
            state = self._states.get(server.alias)
            if (
                state is not None
                and state.reachable
                and state.in_recovery
                and state.lag_seconds <= self.max_lag
                and state.replay_lsn >= min_lsn
                and state.checked_at >= oldest
                # A replica left on an older timeline than its cluster has reached (after a
                # failover: not yet switched, or diverged) may have replayed past a position
                # on another history: a causal token says nothing about it.
                and state.timeline >= newest_tli
            ):
                usable.append(server.alias)
        return usable

    def out_of_reach(self, cluster: str, position: int) -> bool:
        """True when no usable replica of `cluster` has replayed `position` and its primary has
        not answered a sample for stale_after seconds (failing over, or gone): no server can
        serve a read that must see it now. The last positions of a primary that died may never
        reach a replica: WAL written after the last bytes its replicas received."""
        if not position:
            return False
        usable = [self._states.get(alias) for alias in self.usable_replicas(cluster)]
        if not usable or any(s is not None and s.replay_lsn >= position for s in usable):
            return False  # no replica to read instead, or one that has it
        return not self._primary_answering(cluster, time.monotonic())

    def _primary_answering(self, cluster: str, now: float) -> bool:
        seen = self._primary_seen.get(cluster)
        return seen is not None and now - seen <= self.stale_after

    def mark_failed(self, alias: str, error: str) -> None:
        """A request saw a connection error on `alias`: skip it until a check started later passes.

        Primaries are not tracked here (a primary has no fallback), so their aliases are ignored.
        """
        cluster = self._cluster_of.get(alias)
        if cluster is None:
            self.shard_map.server(alias)  # an unknown alias raises UnknownAlias, naming the known
            return
        state = failed_state(alias, cluster, error)
        with self._lock:
            self._failed_at[alias] = state.checked_at
            previous = self._states.get(alias)
            self._states[alias] = state
        self._log_change(previous, state)

    # ----- checks ---------------------------------------------------------------------------------

    def check_once(self) -> None:
        """Check every replica, and read every primary's position, concurrently; return within
        about check_timeout. Never raises.

        A server whose previous check is still running is not checked twice: that check is
        awaited instead, so a hung server never piles up threads. A primary that does not
        answer only leaves its cluster's timeline without a new sample: it says nothing about
        the replicas.
        """
        self._forget_if_forked()
        now = time.monotonic()
        pid = os.getpid()
        checks: list[Check] = []
        samples: list[Check] = []
        # Critical section: decide, per server, to join the running check or start a new one,
        # so two callers (the loop and a request or test) never run two checks of one server.
        with self._lock:
            for cluster, primary in self._primaries.items():
                samples.append(self._start(primary, cluster, now, pid, self._run_sample))
            for cluster, replicas in self._replicas.items():
                for server in replicas:
                    checks.append(self._start(server, cluster, now, pid, self._run_check))
        for check in (*checks, *samples):
            assert check.thread is not None
            check.thread.join(max(0.0, check.started + self.check_timeout - time.monotonic()))
        for check in (*checks, *samples):
            self._give_up(check)

    def _start(self, server: Server, cluster: str, now: float, pid: int,
               run: Callable[[Check], None]) -> Check:
        # Called with self._lock held.
        check = self._inflight.get(server.alias)
        if check is None:
            check = Check(server=server, cluster=cluster, started=now, pid=pid)
            check.thread = NativeThread(run, (check,), name=f"replica-check-{server.alias}")
            self._inflight[server.alias] = check
            check.thread.start()
        return check

    def _finish(self, check: Check) -> None:
        with self._lock:
            if self._inflight.get(check.server.alias) is check:
                del self._inflight[check.server.alias]
        check.done = True

    def _run_check(self, check: Check) -> None:
        alias = check.server.alias
        try:
            state = self._query(check)
        except Exception as exc:  # never raise: any failure is an unreachable replica
            state = failed_state(alias, check.cluster, error_text(exc))
        finally:
            self._finish(check)
        self._record(check, state)

    def _run_sample(self, check: Check) -> None:
        try:
            found = self._sample(check)
        except Exception as exc:  # the primary's own health is not tracked here
            logger.debug("primary %s position unavailable: %s", check.server.alias,
                         error_text(exc))
            found = None
        finally:
            self._finish(check)
        if found is not None and check.pid == os.getpid():
            now = time.monotonic()
            with self._lock:
                self._timelines[check.cluster].observe(found.lsn, now, authoritative=True)
                self._saw_timeline(check.cluster, found.timeline)
                self._primary_seen[check.cluster] = now

    def _saw_timeline(self, cluster: str, timeline: int) -> None:
        # Called with self._lock held.
        if timeline > self._newest_tli.get(cluster, 0):
            self._newest_tli[cluster] = timeline

    def _sample(self, check: Check) -> PrimaryPosition | None:
        """The primary's current WAL position and timeline (None: it is in recovery)."""
        return probe_primary(check, self._res, timeout=self.check_timeout)

    def _query(self, check: Check) -> ReplicaState:
        return self._state_from(check, probe_replica(check, self._res, timeout=self.check_timeout))

    def _state_from(self, check: Check, found: ReplicaPositions) -> ReplicaState:
        """The replica's state from what its probe read and its cluster's timeline."""
        with self._lock:
            timeline = self._timelines[check.cluster]
            if found.receive_lsn is not None:
                timeline.observe(found.receive_lsn, found.answered_at)
            previous = self._states.get(check.server.alias)
            if found.timeline is not None:
                self._saw_timeline(check.cluster, found.timeline)
            as_of = found.answered_at
            seen = self._primary_seen.get(check.cluster)
            if found.timeline is None and seen is not None:
                # A replica that receives nothing (no WAL receiver): its lag is taken as of when
                # its primary last answered us. While that primary answers, that is within an
                # interval of now; once it is gone (failing over, or dead), what it wrote after
                # the replica's last bytes may never arrive, and the lag must not grow with a
                # position no server will ever replay.
                as_of = min(as_of, seen)
            return state_from_positions(
                check.server.alias, check.cluster, found, timeline,
                known_timeline=previous.timeline if previous is not None else 0, as_of=as_of)

    def _give_up(self, check: Check) -> None:
        """The check outlived check_timeout: report the replica unreachable and unstick it.
        (A primary's sample is only unstuck: its primary is not tracked here.)"""
        if check.done:
            return  # finished just now: its own result is recorded
        if check.server.alias not in self._cluster_of:
            unstick(check)
            return
        elapsed = time.monotonic() - check.started
        self._record(check, failed_state(
            check.server.alias, check.cluster,
            f"no answer within {self.check_timeout:g} s (check running for {elapsed:.1f} s)",
        ))
        unstick(check)

    def _record(self, check: Check, state: ReplicaState) -> None:
        alias = state.alias
        with self._lock:
            if check.pid != os.getpid():
                return  # a check the parent started before a fork: not this process's data
            if state.reachable and check.started < self._failed_at.get(alias, -math.inf):
                return  # began before a request saw it fail: cannot vouch for it
            previous = self._states.get(alias)
            newer = previous is not None and previous.checked_at > state.checked_at
            if newer and not state.reachable:
                return  # an older failure must not overwrite a newer answer
            self._states[alias] = state
        self._log_change(previous, state)

    def _log_change(self, previous: ReplicaState | None, state: ReplicaState) -> None:
        # Log transitions only: a replica down for an hour is one warning, not 7,200 lines.
        was = None if previous is None else describe_unhealthy(previous, self.max_lag)
        now = describe_unhealthy(state, self.max_lag)
        if now is not None and (previous is None or was is None):
            logger.warning("replica %s unhealthy: %s", state.alias, now)
        elif now is None and was is not None:
            logger.info(
                "replica %s healthy again: replay %s, lag %.2f s",
                state.alias, format_lsn(state.replay_lsn), state.lag_seconds,
            )


def _check_number(name: str, value: float, *, minimum: float, inclusive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (value == minimum and not inclusive):
        bound = f">= {minimum:g}" if inclusive else f"> {minimum:g}"
        raise ValueError(f"{name} must be a finite number of seconds {bound}, got {value!r}")
