"""Ordered, paged reads and aggregates over every shard, on `routers.scatter.gather` (whose
docstring says how each shard is read, bounded and reported)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from django.db.models import Count, Max, Min, Model, QuerySet, Sum

from routers.scatter import (
    DEFAULT_DEADLINE,
    DEFAULT_TIMEOUT,
    Clock,
    Placement,
    ShardFailure,
    gather,
    read_placement,
)
from shards.merge import Ordering, merge
from shards.scatter_cursor import decode_cursor, encode_cursor
from shards.sharded import ShardedModel

M = TypeVar("M", bound=Model)

MAX_LIMIT = 1000
AggregateFunction = Literal["count", "sum", "min", "max"]
_AGGREGATES = {"count": Count, "sum": Sum, "min": Min, "max": Max}

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
    clock = Clock(deadline)
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
    clock = Clock(deadline)
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
