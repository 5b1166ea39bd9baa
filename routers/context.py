"""The request's routing state, as context variables (the current tenant is
`shards.tenancy`).

A ContextVar is per greenlet under gevent and per task under asyncio, so concurrent requests in
one worker never see each other's state. A greenlet made by `gevent.spawn` (or a thread) starts
with an EMPTY context: fan-out code must carry it (`contextvars.copy_context().run`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass
class RequestRouting:
    """Per-request routing facts the router reads: causal tokens in, shards written so far."""

    # shard name -> primary WAL position (int) the client has seen written
    tokens: dict[str, int] = field(default_factory=dict)
    # a token was present but malformed or forged: send every read of the request to primaries
    distrust_replicas: bool = False
    # tenant id -> directory version the client saw when it last wrote: a worker caching an
    # older placement reloads it, so a moved tenant's reads follow its writes
    tenant_versions: dict[int, int] = field(default_factory=dict)
    # shards written in this request: later reads of the request go to their primary
    written: set[str] = field(default_factory=set)
    # shard -> primary WAL position read after the request's last write there (saves the
    # middleware a second query); any later write drops it
    positions: dict[str, int] = field(default_factory=dict)
    # (alias, reason) -> reads routed there in this request: for metrics and tests
    reads: Counter[tuple[str, str]] = field(default_factory=Counter)


_routing: ContextVar[RequestRouting | None] = ContextVar("shardsvc_routing", default=None)


def current_routing() -> RequestRouting | None:
    return _routing.get()


@contextmanager
def request_routing(state: RequestRouting | None = None) -> Iterator[RequestRouting]:
    """Routing state for one request (set by middleware) or one unit of background work."""
    state = state if state is not None else RequestRouting()
    token = _routing.set(state)
    try:
        yield state
    finally:
        _routing.reset(token)


_pinned: ContextVar[int] = ContextVar("shardsvc_primary_pinned", default=0)


def primary_pinned() -> bool:
    return _pinned.get() > 0


@contextmanager
def use_primary() -> Iterator[None]:
    """Send every read inside the block to primaries (read-modify-write code, checks that must
    not see replica lag). Nestable; only the outermost exit unpins."""
    token = _pinned.set(_pinned.get() + 1)
    try:
        yield
    finally:
        _pinned.reset(token)
