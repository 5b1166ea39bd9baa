"""Scatter-gather reads over every shard: one queryset (or one aggregate) run on each shard at
once, bounded in time, merged, and honest about shards that did not answer.

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
from typing import TYPE_CHECKING, Any, Generic, Literal, NamedTuple, TypeVar

from django.db import DatabaseError, OperationalError, connections
from django.db.models import Count, Max, Min, Model, QuerySet, Sum
from django.dispatch import Signal

from routers.context import no_tenant
from routers.router import choose_read_alias
from shards.merge import Ordering, merge
from shards.scatter_cursor import decode_cursor, encode_cursor
from shards.topology import CONTROL_ALIAS, get_shard_map

if TYPE_CHECKING:
    from project.pgpool.deadline import Deadline

logger = logging.getLogger("shardsvc.scatter")

T = TypeVar("T")
M = TypeVar("M", bound=Model)

DEFAULT_TIMEOUT = 2.0
DEFAULT_DEADLINE = 3.0
MAX_LIMIT = 1000
# Attempts per shard: a replica, another choice (the primary once the replica is marked failed),
# and a spare, as ShardedQuerySet does for single-shard reads.
READ_ATTEMPTS = 3

Reason = Literal["timeout", "unavailable", "error"]
AggregateFunction = Literal["count", "sum", "min", "max"]
_AGGREGATES = {"count": Count, "sum": Sum, "min": Min, "max": Max}

# Sent after every scatter call: kind ("page", "aggregate", "call"), outcome ("complete",
# "partial", "failed") and the failures. project/metrics.py counts them.
scatter_finished = Signal()


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
    from shards.models import Tenant

    tenants: dict[str, dict[int, str]] = {name: {} for name in get_shard_map().shard_names}
    min_lsn: dict[str, int] = {}
    rows = Tenant.objects.using(CONTROL_ALIAS).values_list("id", "slug", "shard", "min_lsn")
    for tenant_id, slug, shard, lsn in rows:
        tenants.setdefault(shard, {})[tenant_id] = slug
        min_lsn[shard] = max(min_lsn.get(shard, 0), lsn)
    return Placement(tenants=tenants, min_lsn=min_lsn)


class _Clock:
    """The call's overall deadline, capped by the request's own when there is one."""

    def __init__(self, deadline: float) -> None:
        from project.pgpool.deadline import current_deadline

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
    clock: _Clock | None = None,
) -> Gathered[T]:
    """Call `task(shard, alias)` on every shard (or `shards`) concurrently. `alias` is the server
    to read: a caught-up replica of that shard, or its primary (`primary=True`, or when no replica
    qualifies). A task that fails on a replica is run again on the next choice."""
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0 seconds, got {timeout!r}")
    clock = clock or _Clock(deadline)
    names = list(shards) if shards is not None else list(get_shard_map().shard_names)
    outcome: Gathered[T] = Gathered()
    if not names:
        return _finish(outcome, kind, allow_partial)
    # Every shard starts at once, so one wait covers both bounds.
    budget = min(timeout, clock.remaining())
    lsn = min_lsn or {}
    from project.pgpool.deadline import Deadline

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
    from project.pgpool.deadline import deadline_scope
    from routers.replicas import get_replica_health

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
                    get_replica_health().mark_failed(alias, str(exc))
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


# ----- ordered pages ----------------------------------------------------------------------------


class Hit(NamedTuple, Generic[M]):
    shard: str
    obj: M


@dataclass
class Page(Generic[M]):
    items: list[Hit[M]]
    next_cursor: str | None
    failures: list[ShardFailure]
    placement: Placement

    @property
    def partial(self) -> bool:
        return bool(self.failures)


def _check_queryset(queryset: QuerySet[Any]) -> None:
    from shards.sharded import ShardedModel

    if not issubclass(queryset.model, ShardedModel):
        raise TypeError(f"{queryset.model._meta.label} is not sharded: query it directly")
    if queryset.query.is_sliced:
        raise TypeError("pass an unsliced queryset: the scatter layer applies the limit")


def query_page(
    queryset: QuerySet[M],
    *,
    order_by: list[str],
    limit: int,
    cursor: str | None = None,
    scope: str = "",
    allow_partial: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    primary: bool = False,
) -> Page[M]:
    """One page of `queryset` over every shard, in `order_by` (which must end with the id).

    Each shard returns at most limit + 1 rows after the cursor (the limit pushed down); the
    k-way merge keeps the first `limit`, and a next cursor when more remain. `scope` names the
    query's filters (e.g. "author=u1"): a cursor is only accepted back with the same scope.
    A partial page's cursor resumes after its last row, so a failed shard's rows before that
    point are not shown by later pages either: callers that need every row refuse partial pages.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise ValueError(f"limit must be between 1 and {MAX_LIMIT}, got {limit!r}")
    _check_queryset(queryset)
    ordering = Ordering.parse(order_by, pk=queryset.model._meta.pk.name)
    position = decode_cursor(cursor, ordering, scope=scope) if cursor else None
    clock = _Clock(deadline)
    placement = read_placement()
    shaped = queryset.order_by(*ordering.specs)
    if position is not None:
        shaped = shaped.filter(ordering.after(position.key))

    def one_shard(shard: str, alias: str) -> list[M]:
        owned = list(placement.tenants.get(shard, {}))
        if not owned:
            return []
        return list(shaped.using(alias).filter(tenant_id__in=owned)[: limit + 1])

    gathered = gather(one_shard, timeout=timeout, deadline=deadline, primary=primary,
                      min_lsn=placement.min_lsn, allow_partial=allow_partial, kind="page",
                      clock=clock)
    tagged = [[Hit(shard, row) for row in rows] for shard, rows in gathered.results.items()]
    merged = merge(tagged, ordering=ordering, limit=limit + 1,
                   key=lambda hit: ordering.key_of(hit.obj))
    items = merged[:limit]
    next_cursor = None
    if len(merged) > limit:
        next_cursor = encode_cursor(ordering, ordering.key_of(items[-1].obj), scope=scope)
    return Page(items=items, next_cursor=next_cursor, failures=gathered.failures,
                placement=placement)


# ----- aggregates -------------------------------------------------------------------------------


@dataclass
class Aggregated:
    values: dict[Any, Any]  # group value (None without group_by) -> the aggregate
    failures: list[ShardFailure]
    placement: Placement

    @property
    def partial(self) -> bool:
        return bool(self.failures)


def combine(function: AggregateFunction, parts: Iterable[dict[Any, Any]]) -> dict[Any, Any]:
    """Per-shard aggregates -> the aggregate of the union. Counts and sums add up; minimums and
    maximums take the extreme; a shard's None (sum/min/max over no rows) adds nothing."""
    combined: dict[Any, Any] = {}
    for part in parts:
        for group, value in part.items():
            if value is None:
                combined.setdefault(group, None)
                continue
            current = combined.get(group)
            if current is None:
                combined[group] = value
            elif function in ("count", "sum"):
                combined[group] = current + value
            elif function == "min":
                combined[group] = min(current, value)
            else:
                combined[group] = max(current, value)
    return combined


def aggregate(
    queryset: QuerySet[Any],
    *,
    function: AggregateFunction,
    field: str = "id",
    group_by: str | None = None,
    allow_partial: bool = True,
    timeout: float = DEFAULT_TIMEOUT,
    deadline: float = DEFAULT_DEADLINE,
    primary: bool = False,
) -> Aggregated:
    """count/sum/min/max of `field` over `queryset` on every shard, optionally grouped by one
    column. Only these four: each shard's part combines exactly into the whole (an average of
    averages would not)."""
    if function not in _AGGREGATES:
        raise ValueError(f"aggregate function {function!r} is not one of "
                         f"{', '.join(_AGGREGATES)}: they are the ones that merge exactly")
    _check_queryset(queryset)
    clock = _Clock(deadline)
    placement = read_placement()
    expression = _AGGREGATES[function](field)

    def one_shard(shard: str, alias: str) -> dict[Any, Any]:
        owned = list(placement.tenants.get(shard, {}))
        if not owned:
            return {}
        rows = queryset.using(alias).filter(tenant_id__in=owned).order_by()
        if group_by is None:
            return {None: rows.aggregate(value=expression)["value"]}
        grouped = rows.values(group_by).annotate(value=expression).values_list(group_by, "value")
        return dict(grouped)

    gathered = gather(one_shard, timeout=timeout, deadline=deadline, primary=primary,
                      min_lsn=placement.min_lsn, allow_partial=allow_partial, kind="aggregate",
                      clock=clock)
    values = combine(function, gathered.results.values())
    if group_by is None and function == "count":
        values.setdefault(None, 0)
    return Aggregated(values=values, failures=gathered.failures, placement=placement)
