"""The per-process registry of connection pools: one pool per (alias, settings) key."""

from __future__ import annotations

from collections.abc import Callable

from .pool import ConnectionPool, PoolKey, PoolStats

_pools: dict[PoolKey, ConnectionPool] = {}


def get_pool(key: PoolKey, factory: Callable[[], ConnectionPool]) -> ConnectionPool:
    """The pool for ``key``, created by ``factory`` on first use (which opens no connection)."""
    pool = _pools.get(key)
    if pool is None:
        # setdefault is atomic: of two racing creators the first wins, the other pool is unused.
        pool = _pools.setdefault(key, factory())
        # The alias now points elsewhere (a live topology change re-pointed it, or test setup
        # renamed its database): the old pool would keep its idle connections to the old
        # server for the life of the process. Retired, it closes them, and closes each
        # connection still checked out as it comes back.
        for old in [other for other in list(_pools) if other.alias == key.alias and other != key]:
            retire_pool(old)
    return pool


def retire_pool(key: PoolKey) -> None:
    """Drop the pool for ``key`` so the next checkout builds one from current settings."""
    pool = _pools.pop(key, None)
    if pool is not None:
        pool.retire()


def close_all_pools() -> None:
    """Close the idle connections of every pool (tests, worker exit); pools stay usable."""
    for pool in list(_pools.values()):
        pool.close_idle()


def pool_stats() -> dict[PoolKey, PoolStats]:
    """Stats of every pool in this process, for metrics."""
    return {key: pool.stats() for key, pool in list(_pools.items())}
