"""A circuit breaker: after repeated failures a dependency is left alone for a while, then one
caller probes it.

    closed     calls go through; `failure_threshold` consecutive failures open it
    open       calls are refused at once (no I/O) until `reset_after` seconds have passed
    half_open  one caller is let through as a probe: its success closes the breaker, its failure
               opens it again; the others are still refused. A probe that never reports back (its
               caller was cancelled) is replaced after another `reset_after`.

Pure logic with an injected clock: no I/O, and the lock guards only a few assignments, so callers
under gevent never wait on it for long. Listeners run after the lock is released.

Hand-written rather than pybreaker's: pybreaker holds its lock for the whole protected call, which
under gevent would queue every Redis command of a worker behind the slowest one, and it lets every
caller through in half-open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# What permit() answers.
CALL = "call"
PROBE = "probe"
REFUSE = "refuse"

Listener = Callable[[str, str], None]  # (old state, new state)


@dataclass(frozen=True)
class BreakerSnapshot:
    state: str
    consecutive_failures: int
    retry_in: float  # seconds until a probe may go (0 unless open)


class CircuitBreaker:
    def __init__(self, *, failure_threshold: int = 3, reset_after: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if failure_threshold < 1:
            raise ValueError("failure_threshold must be at least 1")
        if reset_after <= 0:
            raise ValueError("reset_after must be positive")
        self.failure_threshold = failure_threshold
        self.reset_after = reset_after
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._retry_at = 0.0  # open: when a probe may go; half_open: when the probe expires
        self._listeners: list[Listener] = []

    @property
    def state(self) -> str:
        return self._state

    def snapshot(self) -> BreakerSnapshot:
        with self._lock:
            retry_in = max(0.0, self._retry_at - self._clock()) if self._state == OPEN else 0.0
            return BreakerSnapshot(self._state, self._failures, retry_in)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def allow(self) -> bool:
        """May a call go now? In half-open, True for exactly one caller (the probe)."""
        return self.permit() != REFUSE

    def permit(self) -> str:
        """CALL (closed: go ahead), PROBE (this caller is the one probe: report its outcome) or
        REFUSE (open, or half-open with a probe under way)."""
        if self._state == CLOSED:  # the hot path: no lock
            return CALL
        with self._lock:
            old = self._state
            if old == CLOSED:
                return CALL
            now = self._clock()
            if now < self._retry_at:
                return REFUSE
            # Open and due, or half-open with a probe that never reported: this caller probes.
            self._state = HALF_OPEN
            self._retry_at = now + self.reset_after
        self._notify(old, HALF_OPEN)
        return PROBE

    def success(self) -> None:
        if self._state == CLOSED and self._failures == 0:  # the hot path: no lock
            return
        with self._lock:
            old = self._state
            self._state = CLOSED
            self._failures = 0
            self._retry_at = 0.0
        self._notify(old, CLOSED)

    def failure(self) -> None:
        with self._lock:
            old = self._state
            self._failures += 1
            if old == CLOSED and self._failures < self.failure_threshold:
                return
            if old == OPEN:
                return  # a call that started before the breaker opened: the period stands
            self._state = OPEN
            self._retry_at = self._clock() + self.reset_after
        self._notify(old, OPEN)

    def _notify(self, old: str, new: str) -> None:
        if old == new:
            return
        for listener in self._listeners:
            listener(old, new)
