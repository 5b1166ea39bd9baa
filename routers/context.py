"""Primary pinning, as a context variable (the request's routing state is `routers.state`, the
current tenant `shards.tenancy`).

A ContextVar is per greenlet under gevent and per task under asyncio, so concurrent requests in
one worker never see each other's pinning. A greenlet made by `gevent.spawn` (or a thread)
starts with an EMPTY context: fan-out code must carry it (`contextvars.copy_context().run`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

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
