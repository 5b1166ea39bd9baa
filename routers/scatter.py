"""Scatter-gather reads over every shard: one function run on each shard at once, bounded in
time, and honest about shards that did not answer (`gather`). Ordered pages and aggregates on top
of it are in routers/scatter_queries.py:

    page = query_page(Comment.unscoped.filter(author="u1"), order_by=["-id"], limit=50,
                      cursor=request_cursor, allow_partial=True)
    page.items          # [Hit(shard="shard_0", obj=<Comment>), ...], merged in order
    page.next_cursor    # opaque and signed; None on the last page
    page.partial        # True when a shard failed or ran out of time: page.failures names it

    counts = aggregate(Comment.unscoped.all(), function="count", group_by="tenant_id")

How each shard is read:
- Concurrently: one thread per shard (a greenlet under the gevent worker), each running with a
  copy of the caller's context (a new greenlet starts with an empty one: no routing state, no
  request deadline), with the tenant cleared, and with its own Django connections, closed after.
- On a replica chosen by the same rules as single-shard reads (routers.router.choose_read_alias:
  healthy, within the lag bound, past the request's causal token for that shard, and past the
  placement's min-LSN of every tenant it serves); a replica that fails is marked failed and the
  read retried on the next choice, the primary at the latest.
- Only the rows of tenants the directory places on that shard: during a move the target holds a
  copy before the flip and the source keeps its rows for a grace period after it, so without this
  filter a moving tenant's rows would be counted twice. Placement is read from the control
  primary, not the directory cache, which may be seconds old.
- Within `timeout` seconds per shard, and `deadline` seconds for the whole call (and never past
  the request's own deadline): when a shard's time runs out its database connections are cut
  (project.pgpool.deadline), so a hung server costs the caller the timeout and no more.

A shard that fails or runs out of time is reported in `failures` with a reason ("timeout",
"unavailable", "error"). With allow_partial=False the call raises IncompleteScatter (an
OperationalError, so an API answers 503) instead of returning a partial answer. Errors in the
query itself (a bad field, a bad ordering) are the caller's bug and raise as they are.
"""

from __future__ import annotations

import contextvars
import logging
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Generic, Literal, TypeVar

from django.db import DatabaseError, OperationalError, connections

from project.pgpool.deadline import Deadline, current_deadline, deadline_scope
from routers.router import choose_read_alias
from routers.signals import scatter_finished
from shards.aliases import CONTROL_ALIAS
from shards.models import Tenant
from shards.runtime import replica_health
from shards.tenancy import no_tenant
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.scatter")

T = TypeVar("T")

DEFAULT_TIMEOUT = 2.0
DEFAULT_DEADLINE = 3.0
# Attempts per shard: a replica, another choice (the primary once the replica is marked failed),
# and a spare, as ShardedQuerySet does for single-shard reads.
READ_ATTEMPTS = 3

Reason = Literal["timeout", "unavailable", "error"]


@dataclass(frozen=True)
class ShardFailure:
    shard: str
    reason: Reason
    # For logs and operators: may name hosts and ports, so APIs answer `public_message` instead.
    detail: str
    error: BaseException | None = field(default=None, compare=False, repr=False)

    @property
    def public_message(self) -> str:
        return {
            "timeout": "the shard did not answer within the time allowed",
            "unavailable": "the shard's database is unavailable",
            "error": "the query failed on this shard",
        }[self.reason]


class IncompleteScatter(OperationalError):
    """Some shards failed and the caller asked for all or nothing."""

    def __init__(self, failures: list[ShardFailure]) -> None:
        names = ", ".join(f"{f.shard} ({f.reason})" for f in failures)
        super().__init__(
            f"{len(failures)} shard(s) did not answer: {names}; retry, or accept a partial "
            "answer (allow_partial)"
        )
        self.failures = failures


@dataclass
class Gathered(Generic[T]):
    results: dict[str, T] = field(default_factory=dict)
    failures: list[ShardFailure] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool(self.failures)


@dataclass(frozen=True)
class Placement:
    """Which tenants each shard serves now, from the control primary."""

    tenants: dict[str, dict[int, str]]  # shard -> {tenant id: slug}
    min_lsn: dict[str, int]  # shard -> the highest min-LSN of its tenants

    def slug(self, tenant_id: int) -> str:
        for tenants in self.tenants.values():
            if tenant_id in tenants:
                return tenants[tenant_id]
        return str(tenant_id)


def read_placement() -> Placement:
    tenants: dict[str, dict[int, str]] = {name: {} for name in get_shard_map().shard_names}
    min_lsn: dict[str, int] = {}
    rows = Tenant.objects.using(CONTROL_ALIAS).values_list("id", "slug", "shard", "min_lsn")
    for tenant_id, slug, shard, lsn in rows:
        tenants.setdefault(shard, {})[tenant_id] = slug
        min_lsn[shard] = max(min_lsn.get(shard, 0), lsn)
    return Placement(tenants=tenants, min_lsn=min_lsn)


class Clock:
    """The call's overall deadline, capped by the request's own when there is one."""

    def __init__(self, deadline: float) -> None:
        if not deadline > 0:
            raise ValueError(f"deadline must be > 0 seconds, got {deadline!r}")
        outer = current_deadline()
        if outer is not None:
            deadline = min(deadline, outer.remaining())
        self.ends_at = time.monotonic() + deadline

    def remaining(self) -> float:
        return max(0.0, self.ends_at - time.monotonic())


def gather(
    task: Callable[[str, str], T],
    *,
    shards: Iterable[str] | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    primary: bool = False,
    min_lsn: dict[str, int] | None = None,
    allow_partial: bool = True,
    kind: str = "call",
    clock: Clock | None = None,
) -> Gathered[T]:
    """Call `task(shard, alias)` on every shard (or `shards`) concurrently. `alias` is the server
    to read: a caught-up replica of that shard, or its primary (`primary=True`, or when no replica
    qualifies). A task that fails on a replica is run again on the next choice."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    clock = clock or Clock(deadline)
    names = list(shards) if shards is not None else list(get_shard_map().shard_names)
    outcome: Gathered[T] = Gathered()
    if not names:
        return _finish(outcome, kind, allow_partial)
    # Every shard starts at once, so one wait covers both bounds.
    budget = min(timeout, clock.remaining())
    lsn = min_lsn or {}

    # One deadline per shard; this thread is their timer: when the wait below ends, the shards
    # still running have their connections cut, which wakes their queries at once.
    limits = {name: Deadline(max(budget, 0.001)) for name in names}
    pool = ThreadPoolExecutor(max_workers=len(names), thread_name_prefix="scatter")
    try:
        futures: dict[Future[T], str] = {
            pool.submit(contextvars.copy_context().run, _run_on_shard, task, name,
                        limits[name], primary, lsn.get(name, 0)): name
            for name in names
        }
        done, _ = wait(futures, timeout=budget)
        for future, name in futures.items():
            if future not in done:
                limits[name].expire()
        for future, name in futures.items():
            if future not in done:
                message = f"no answer within {budget:.3g} s"
                outcome.failures.append(ShardFailure(name, "timeout", message,
                                                     TimeoutError(message)))
                continue
            exc = future.exception()
            if exc is None:
                outcome.results[name] = future.result()
            elif isinstance(exc, _ShardError):
                outcome.failures.append(exc.failure)
            else:
                raise exc  # the query's own bug: the same on every shard
    finally:
        # Never wait for a late shard: its connections are cut by its deadline and it ends soon.
        pool.shutdown(wait=False, cancel_futures=True)
    if outcome.failures:
        outcome.failures.sort(key=lambda f: f.shard)
        for failure in outcome.failures:
            logger.warning("scatter %s: %s %s: %s", kind, failure.shard, failure.reason,
                           failure.detail)
    return _finish(outcome, kind, allow_partial)


def _finish(outcome: Gathered[T], kind: str, allow_partial: bool) -> Gathered[T]:
    result = "complete" if not outcome.failures else "partial" if allow_partial else "failed"
    scatter_finished.send(sender=Gathered, kind=kind, outcome=result, failures=outcome.failures)
    if outcome.failures and not allow_partial:
        raise IncompleteScatter(outcome.failures)
    return outcome


class _ShardError(Exception):
    def __init__(self, failure: ShardFailure) -> None:
        super().__init__(failure.detail)
        self.failure = failure


def _run_on_shard(task: Callable[[str, str], T], name: str, limit: Deadline, primary: bool,
                  min_lsn: int) -> T:
    try:
        with deadline_scope(limit), no_tenant():
            for attempt in range(READ_ATTEMPTS):
                alias = name if primary else choose_read_alias(name, min_lsn=min_lsn)
                try:
                    return task(name, alias)
                except OperationalError as exc:
                    if limit.expired or limit.remaining() <= 0:
                        raise _ShardError(ShardFailure(name, "timeout", _text(exc), exc)) from exc
                    replica = get_shard_map().server(alias).role == "replica"
                    if not replica or attempt == READ_ATTEMPTS - 1:
                        raise _ShardError(
                            ShardFailure(name, "unavailable", _text(exc), exc)) from exc
                    logger.warning("scatter read on %s failed, retrying elsewhere: %s", alias, exc)
                    replica_health().mark_failed(alias, str(exc))
                    try:
                        connections[alias].close()
                    except Exception:  # already broken; the pool frees its slot
                        logger.debug("closing the failed connection to %s", alias, exc_info=True)
                except DatabaseError as exc:
                    raise _ShardError(ShardFailure(name, "error", _text(exc), exc)) from exc
            raise AssertionError("unreachable: the last attempt returns or raises")
    finally:
        connections.close_all()


def _text(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
