"""The current tenant, as a context variable: whose rows the sharded managers read and write.

It sits with the sharded models, not with the router, because the models' default manager and
the fence's retry need it as much as the router does, and all of them sit above the directory
that resolves a slug or id to a placement.

A ContextVar is per greenlet under gevent and per task under asyncio, so concurrent requests in
one worker never see each other's tenant. A greenlet made by `gevent.spawn` (or a thread) starts
with an EMPTY context: fan-out code must carry it (`contextvars.copy_context().run`) or set the
tenant itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from shards.directory import TenantEntry, lookup

_tenant: ContextVar[TenantEntry | None] = ContextVar("shardsvc_tenant", default=None)


def current_tenant() -> TenantEntry | None:
    return _tenant.get()


class tenant:  # named as the function it replaced: `with tenant(...)`
    """Make `which` (an entry, a slug or a tenant id) the current tenant inside the block.

    Nestable: the outer tenant (or none) is restored on exit, also on error. A class, not a
    generator context manager: it scopes every tenanted request, and contextlib's wrapping
    cost six Python calls more per use.
    """

    __slots__ = ("_token", "entry")

    def __init__(self, which: TenantEntry | str | int) -> None:
        self.entry = which if isinstance(which, TenantEntry) else lookup(which)

    def __enter__(self) -> TenantEntry:
        self._token = _tenant.set(self.entry)
        return self.entry

    def __exit__(self, *exc_info: object) -> None:
        _tenant.reset(self._token)


@contextmanager
def no_tenant() -> Iterator[None]:
    """Clear the current tenant inside the block (control-only work in a tenant's request)."""
    token = _tenant.set(None)
    try:
        yield
    finally:
        _tenant.reset(token)
