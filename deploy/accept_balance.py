"""Even keep-alive connections out between Gunicorn's workers.

Every worker accepts from the one listening socket, and a keep-alive connection stays with the
worker that accepted it. When many clients connect at once (a load balancer filling its pool, a
load generator), whichever worker wakes first takes most of them: 63 of 64 connections on one
of two workers, and 39 against 25, were seen here (bench_perf's pool tails run). Each worker
then serves its connections' requests at the same rate, so those of the crowded worker wait
longer and the service's tail latency is that worker's.

This keeps a table in memory shared by the master and its workers (made before the workers are
forked): per worker, its pid, its open connections and when it last reported alive. A worker
that holds more than SLACK connections over the least loaded live worker stops accepting and
looks again RECHECK_SECONDS later: the connections waiting meanwhile go to the others, which
are watching the same socket. A worker that has not reported for STALE_SECONDS (hung, or being
replaced) does not count, so a stuck worker never makes the others stop accepting.
"""

from __future__ import annotations

import os
import time
from multiprocessing.sharedctypes import RawArray
from typing import Any

SLOTS = 64  # workers of one master at once, restarts included (a slot is freed on exit)
SLACK = 2  # connections a worker may hold over the least loaded one and still accept
RECHECK_SECONDS = 0.005
STALE_SECONDS = 3.0
_PID, _CONNECTIONS, _SEEN = range(3)


class AcceptBalance:
    """The shared table. Made in the master; `claim` and `release` run there, the rest in
    the worker given the slot."""

    def __init__(self, slots: int = SLOTS) -> None:
        self.slots = slots
        self._table: Any = RawArray("d", slots * 3)  # pid, connections, last seen (monotonic)
        self.slot: int | None = None  # this worker's, once attached

    # ----- the master

    def claim(self) -> int | None:
        """A free slot for a worker about to be forked, or None (more workers than slots:
        that one accepts unbalanced)."""
        for slot in range(self.slots):
            if self._table[slot * 3 + _PID] == 0:
                self._table[slot * 3 + _PID] = -1  # claimed, not started
                self._table[slot * 3 + _CONNECTIONS] = 0
                self._table[slot * 3 + _SEEN] = 0
                return slot
        return None

    def release(self, slot: int | None) -> None:
        if slot is not None:
            self._table[slot * 3 + _SEEN] = 0
            self._table[slot * 3 + _CONNECTIONS] = 0
            self._table[slot * 3 + _PID] = 0

    # ----- a worker

    def attach(self, slot: int) -> None:
        self.slot = slot
        self._table[slot * 3 + _PID] = os.getpid()
        self._table[slot * 3 + _CONNECTIONS] = 0
        self.alive()

    def alive(self) -> None:
        """Report this worker alive: Gunicorn's worker does it every second (notify)."""
        if self.slot is not None:
            self._table[self.slot * 3 + _SEEN] = time.monotonic()

    def opened(self) -> None:
        if self.slot is not None:
            self._table[self.slot * 3 + _CONNECTIONS] += 1

    def closed(self) -> None:
        if self.slot is not None:
            self._table[self.slot * 3 + _CONNECTIONS] -= 1

    def crowded(self) -> bool:
        """More than SLACK connections over the least loaded live worker."""
        if self.slot is None:
            return False
        table, now = self._table, time.monotonic()
        mine = table[self.slot * 3 + _CONNECTIONS]
        least = None
        for slot in range(self.slots):
            if slot == self.slot or table[slot * 3 + _PID] <= 0:
                continue
            if now - table[slot * 3 + _SEEN] > STALE_SECONDS:
                continue
            connections = table[slot * 3 + _CONNECTIONS]
            if least is None or connections < least:
                least = connections
        return least is not None and mine > least + SLACK
