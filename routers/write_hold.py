"""Writes held, not failed, while their shard cannot take them for a moment.

Two things stop a tenant's writes for a moment, and writers wait through both the same way:
- its move's cutover: the source shard's fence refuses them (`shards.fence`) until the
  directory flips, so each retry reloads the tenant's placement;
- a failover of its shard's primary: the old primary is read-only or gone until the new one
  is promoted and PgBouncer points at it (`project.db_faults` tells these errors apart).

    @retry_writes
    def post_comment(...):               # one transaction on the current tenant's shard
        with causal.write_transaction(shard): ...

A held write is retried with short, growing waits, for at most FENCE_RETRY_SECONDS (a move)
or FAILOVER_HOLD_SECONDS (a failover), and never past the request's deadline; then the
client gets a 503 with Retry-After that says why. A write that may have committed
(`CommitOutcomeUnknown`: the connection was lost during its COMMIT) is never run again.

Through a failover, one held write per process and shard keeps trying (the prober); the other
writes held on that shard, and those that come meanwhile (before their first try), wait for it
to go through, then all try again at once, or take over when it gives up. Each try costs a
new connection to PgBouncer (the failed one is dropped): with every held write trying on its
own, a primary lost whole (the leader key expiring, ~20 s) had writes at 200/s spend ~40% of a
worker's CPU on tries, and the other shards' reads fell from 393/s to 301/s meanwhile
(bench_failover's member round, py-spy).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.db import DatabaseError, OperationalError, connections

from project.db_faults import unavailable_reason
from project.pgpool.deadline import current_deadline
from project.pgpool.errors import CommitOutcomeUnknown
from shards.directory import TenantEntry, get_directory
from shards.fence import TenantStillFenced, is_fence_error
from shards.runtime import runtime
from shards.tenancy import current_tenant, tenant

logger = logging.getLogger("shardsvc.writes")

T = TypeVar("T")

FENCED = "fenced"
# Seconds between retries: (first wait, longest wait). A cutover pauses writes for tens of
# milliseconds, and a writer that slept past the flip adds its oversleep to the pause it sees;
# a retry costs the source one index probe. A promotion takes seconds, and each retry against
# a stopped server may cost a connection attempt, so those waits grow further, but not past
# 0.2 s: the wait that spans the new primary's first writable moment adds to the pause a client
# sees (at 0.5 s, writes through the service paused 0.5-1.9 s longer than PgBouncer's own).
FENCE_WAITS = (0.005, 0.05)
FAILOVER_WAITS = (0.05, 0.2)
# Time left to the request's deadline below which no new attempt starts: the client gets this
# module's answer rather than the deadline's.
DEADLINE_RESERVE = 0.5
# How often a write waiting for its shard's prober looks whether the prober gave up.
PROBER_CHECK_SECONDS = 0.5


class _Outage:
    """A shard whose primary fails this process's writes: the write that keeps trying, and the
    event the others wait on. Made when first needed (under gevent, after the monkey patching:
    its event then yields to other greenlets)."""

    __slots__ = ("back", "prober", "reason")

    def __init__(self, reason: str) -> None:
        self.back = threading.Event()
        self.prober: _Hold | None = None
        self.reason = reason  # why the primary failed the prober's last try


# shard -> its outage, while one lasts
_OUTAGES: dict[str, _Outage] = {}


def _went_through(shard: str) -> None:
    """A write of `shard` went through: the writes waiting for its primary try again."""
    outage = _OUTAGES.pop(shard, None)
    if outage is not None:
        outage.back.set()


class PrimaryUnavailable(OperationalError):
    """A shard's primary refused or missed a write for longer than FAILOVER_HOLD_SECONDS."""


def hold_reason(exc: BaseException) -> str | None:
    """Why this failed write may succeed if run again shortly (FENCED, or the primary's state:
    "read-only", "unreachable"), or None when it must not be run again."""
    if isinstance(exc, CommitOutcomeUnknown):
        return None
    if is_fence_error(exc):
        return FENCED
    return unavailable_reason(exc)


def retry_writes(function: Callable[..., T]) -> Callable[..., T]:
    """Run a write of the current tenant, holding it through a move's fence or a failover of
    its primary (see the module docstring). The write must be one transaction of its own (a
    fence or failover error rolls it back whole), so running it again is safe; inside a
    transaction of the caller it is not retried."""

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        entry = current_tenant()
        if entry is None:
            return function(*args, **kwargs)
        hold = _Hold(entry)
        try:
            if _OUTAGES:
                hold.wait_for_prober_first()
            while True:
                try:
                    with tenant(hold.entry):
                        result = function(*args, **kwargs)
                except DatabaseError as exc:
                    hold.wait_or_raise(exc)
                else:
                    if _OUTAGES:
                        _went_through(hold.entry.shard)
                    if hold.waits:
                        hold.log_through()
                    return result
        finally:
            hold.stop_probing()

    return wrapper


class _Hold:
    """One held write: its attempts' budget and waits."""

    def __init__(self, entry: TenantEntry) -> None:
        self.entry = entry
        self.started = time.monotonic()
        self.waits: dict[str, float] = {}
        self.slept = 0.0  # seconds asleep between attempts
        self.attempts = 1
        self.probing: str | None = None  # the shard whose outage this write probes

    def log_through(self) -> None:
        """How long the write was held, once it went through: what a cutover or a failover
        cost this client, in the log line an operator greps for beside the first one."""
        logger.info("write of %s went through on %s after %.0f ms held (%d attempts, %.0f ms "
                    "asleep; %s)", self.entry.slug, self.entry.shard,
                    (time.monotonic() - self.started) * 1000, self.attempts, self.slept * 1000,
                    ", ".join(self.waits))

    def wait_or_raise(self, exc: DatabaseError) -> None:
        """Sleep before the next attempt, or raise: `exc` itself when it is not worth another
        attempt, the 503's error when the hold ran out."""
        reason = hold_reason(exc)
        shard = self.entry.shard
        if reason is None or connections[shard].in_atomic_block:
            raise exc
        deadline = current_deadline()
        if deadline is not None and deadline.expired:
            raise exc  # the deadline cut the connection: its own answer names it
        conf = runtime.conf()
        fenced = reason == FENCED
        budget = conf.fence_retry_seconds if fenced else conf.failover_hold_seconds
        first, longest = FENCE_WAITS if fenced else FAILOVER_WAITS
        delay = self.waits.get(reason, first)
        self.waits[reason] = min(delay * 1.5, longest)
        now = time.monotonic()
        held = now - self.started
        end = self._end(budget)
        if now + delay >= end:
            raise self._gave_up(reason, held, budget) from exc
        if len(self.waits) == 1 and delay == first:
            logger.warning("write of %s held: %s", self.entry.slug,
                           f"it is fenced on {shard} (moving)" if fenced
                           else f"the primary of {shard} is {reason}")
        # A connection the failure broke goes back to the pool, which drops it; the next
        # attempt checks out a working one.
        with contextlib.suppress(DatabaseError):
            connections[shard].close()
        if not fenced and not self._probe(shard, reason):
            self._wait_for_prober(shard, end, reason, budget, exc)
        else:
            time.sleep(delay)  # cooperative under gevent
            self.slept += delay
        self.attempts += 1
        if fenced:
            self.entry = get_directory().lookup(self.entry.id, fresh=True)

    def _probe(self, shard: str, reason: str) -> bool:
        """Become (or stay) the write that keeps trying `shard`'s primary; False if another
        write of this process does."""
        outage = _OUTAGES.get(shard)
        if outage is None:
            outage = _OUTAGES.setdefault(shard, _Outage(reason))
        if outage.prober is None or outage.prober is self:
            outage.prober = self
            outage.reason = reason
            self.probing = shard
            return True
        return False

    def wait_for_prober_first(self) -> None:
        """Before this write's first try: while another write of this process is trying its
        shard's primary through a failover, wait for it as a held write does (a try would
        open a connection to PgBouncer only to fail like the prober's)."""
        shard = self.entry.shard
        outage = _OUTAGES.get(shard)
        if (outage is None or outage.prober is None or outage.back.is_set()
                or connections[shard].in_atomic_block):
            return
        budget = runtime.conf().failover_hold_seconds
        self.waits.setdefault(outage.reason, FAILOVER_WAITS[0])
        self._wait_for_prober(shard, self._end(budget), outage.reason, budget, None)

    def _end(self, budget: float) -> float:
        """When this write's hold ends: its budget from the first try, or the request's
        deadline less DEADLINE_RESERVE, whichever comes first."""
        end = self.started + budget
        deadline = current_deadline()
        if deadline is not None:
            end = min(end, time.monotonic() + deadline.remaining() - DEADLINE_RESERVE)
        return end

    def _wait_for_prober(self, shard: str, end: float, reason: str, budget: float,
                         exc: DatabaseError | None) -> None:
        """Wait, without trying, until a write of `shard` goes through or its prober gives up
        (then this write takes over), within this write's own bound."""
        outage = _OUTAGES.get(shard)
        while True:
            # The outage this write waits on: once a write went through it is over (its event
            # set, even if another write has failed since and a new one begun).
            if outage is None or outage.back.is_set() or self._probe(shard, reason):
                return
            now = time.monotonic()
            if now >= end:
                raise self._gave_up(reason, now - self.started, budget) from exc
            wait = min(end - now, PROBER_CHECK_SECONDS)
            outage.back.wait(wait)
            self.slept += min(wait, time.monotonic() - now)

    def stop_probing(self) -> None:
        """This write's hold is over: if it was trying for the others and did not go through,
        one of them takes over at its next look."""
        if self.probing is not None:
            outage = _OUTAGES.get(self.probing)
            if outage is not None and outage.prober is self:
                outage.prober = None
            self.probing = None

    def _gave_up(self, reason: str, held: float, budget: float) -> DatabaseError:
        entry = self.entry
        if reason == FENCED:
            return TenantStillFenced(
                f"tenant {entry.slug} has been fenced for {held:.0f} s; its move may be stuck: "
                "see shard_status"
            )
        logger.warning("write of %s failed after %.1f s: the primary of %s is %s", entry.slug,
                       held, entry.shard, reason)
        return PrimaryUnavailable(
            f"the primary of {entry.shard} did not take this write for {held:.1f} s "
            f"(hold bound {budget:g} s): it is {reason}, a failover may be in progress; "
            "retry shortly"
        )
