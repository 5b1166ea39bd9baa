"""Run one read on every shard at once and merge the answers (admin pages, reports).

Each shard's call runs in its own thread, which is a greenlet under the gevent worker, with a
copy of the caller's context (a new greenlet starts with an empty one) and its own Django
connections, closed when it is done. A shard that fails is reported in `errors`, never dropped
silently: callers decide whether a partial answer is good enough.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from django.db import connections

from routers.router import choose_read_alias
from shards.tenancy import no_tenant
from shards.topology import get_shard_map

T = TypeVar("T")


@dataclass
class FanoutResult(Generic[T]):
    results: dict[str, T] = field(default_factory=dict)
    errors: dict[str, BaseException] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.errors

    def raise_for_errors(self) -> None:
        if self.errors:
            detail = "; ".join(f"{name}: {exc}" for name, exc in sorted(self.errors.items()))
            raise FanoutError(f"{len(self.errors)} shard(s) failed: {detail}", self)


class FanoutError(RuntimeError):
    def __init__(self, message: str, result: FanoutResult) -> None:
        super().__init__(message)
        self.result = result


def on_every_shard(
    function: Callable[[str], T],
    *,
    shards: Iterable[str] | None = None,
    primary: bool = False,
) -> FanoutResult[T]:
    """Call `function(alias)` for each shard, concurrently; `alias` is a caught-up replica of
    that shard (or its primary with primary=True, or when no replica qualifies). Use it with
    `Model.unscoped.using(alias)` or `connections[alias]`."""
    names = list(shards) if shards is not None else list(get_shard_map().shard_names)
    outcome: FanoutResult[T] = FanoutResult()
    if not names:
        return outcome

    def run(name: str) -> None:
        alias = name if primary else choose_read_alias(name)
        try:
            with no_tenant():
                outcome.results[name] = function(alias)
        except Exception as exc:
            outcome.errors[name] = exc
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = [pool.submit(contextvars.copy_context().run, run, name) for name in names]
        for future in futures:
            future.result()
    return outcome
