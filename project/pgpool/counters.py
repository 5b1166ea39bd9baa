"""What the pools of this process count, kept apart from the pools: a pool retired after a
settings change must not take its counts with it, so the totals only ever grow (what a
Prometheus counter needs)."""

from __future__ import annotations

import threading

# Checkouts that gave up waiting (PoolTimeout), by alias, since the process started.
_timeouts: dict[str, int] = {}
_counter_lock = threading.Lock()


def count_timeout(alias: str) -> None:
    with _counter_lock:
        _timeouts[alias] = _timeouts.get(alias, 0) + 1


def timeout_counts() -> dict[str, int]:
    """Checkouts per alias that waited the pool's timeout and gave up, since the process
    started (metrics read this)."""
    with _counter_lock:
        return dict(_timeouts)
