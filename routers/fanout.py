"""Run one function on every shard at once, results by shard (admin pages, reports).

A thin face over routers.scatter.gather, which does the work: one thread (a greenlet under the
gevent worker) per shard with a copy of the caller's context, the tenant cleared, its own Django
connections, a caught-up replica unless primary=True, and a time limit. A shard whose database
fails or that runs out of time is reported in `errors`, never dropped silently: callers decide
whether a partial answer is good enough. An error of `function` itself (not a database error) is
the same bug on every shard and is raised. For ordered, paged or aggregated reads use
routers.scatter directly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from routers.scatter import gather

# Reports and admin pages may scan whole tables: far more than an interactive read's 2 s.
DEFAULT_TIMEOUT = 30.0

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
    timeout: float = DEFAULT_TIMEOUT,
) -> FanoutResult[T]:
    """Call `function(alias)` for each shard, concurrently; `alias` is a caught-up replica of
    that shard (or its primary with primary=True, or when no replica qualifies). Use it with
    `Model.unscoped.using(alias)` or `connections[alias]`. A shard still running after `timeout`
    seconds has its connections cut and is reported as failed."""
    gathered = gather(lambda _shard, alias: function(alias), shards=shards, primary=primary,
                      timeout=timeout, deadline=timeout, kind="call")
    outcome: FanoutResult[T] = FanoutResult(results=gathered.results)
    for failure in gathered.failures:
        outcome.errors[failure.shard] = failure.error or RuntimeError(failure.detail)
    return outcome
