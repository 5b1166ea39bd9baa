"""Ordering for cross-shard pages: sort specs, the k-way merge, and the keyset filter that
resumes a page after a position.

An ordering is a list of fields, each ascending or descending ("-id"), that must end with the
primary key: ids are unique across shards (shards/global_ids.py), so (fields..., id) is a total
order over the union of every shard, and "the rows after this key" means the same thing on every
shard. That is what lets one cursor resume the merge everywhere, also after a tenant moved: a
moved row keeps its id and its sort values, so it is after the key on its new shard exactly when
it was after it on the old one.

Pure logic: no database, no settings.
"""

from __future__ import annotations

import functools
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.db.models import Q

R = TypeVar("R")

# Values a cursor can carry and compare: JSON round-trips them unchanged. bool is an int to
# Python, and would compare as one, so it is refused with the rest.
SortValue = int | str


class BadOrdering(ValueError):
    """An ordering the merge cannot use; the message says how to fix it."""


@dataclass(frozen=True)
class SortField:
    name: str
    descending: bool

    @property
    def spec(self) -> str:
        return f"-{self.name}" if self.descending else self.name


@dataclass(frozen=True)
class Ordering:
    fields: tuple[SortField, ...]

    @classmethod
    def parse(cls, specs: Sequence[str], *, pk: str = "id") -> Ordering:
        """`["-score", "-id"]` -> an Ordering. The last field must be the primary key (`pk`), the
        tie-breaker that makes the order total across shards; it may appear only there."""
        if isinstance(specs, str) or not specs:
            raise BadOrdering("order_by needs a list of fields, e.g. ['-id'], ending with the id")
        fields = []
        for spec in specs:
            if not isinstance(spec, str) or not spec.lstrip("-") or spec.startswith("--"):
                raise BadOrdering(f"bad order field {spec!r}: a field name, '-' for descending")
            name = spec.lstrip("-")
            fields.append(SortField(name=name, descending=spec.startswith("-")))
        names = [f.name for f in fields]
        if names[-1] not in (pk, "pk"):
            raise BadOrdering(
                f"order_by {list(specs)!r} must end with {pk!r} (or '-{pk}'): ids are unique "
                "across shards, so only an ordering ending with them is total and resumable"
            )
        if len(set(names)) != len(names) or pk in names[:-1] or "pk" in names[:-1]:
            raise BadOrdering(f"order_by {list(specs)!r} names a field twice")
        return cls(fields=tuple(fields))

    @property
    def specs(self) -> list[str]:
        return [f.spec for f in self.fields]

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def key_of(self, row: Any) -> tuple[SortValue, ...]:
        """The sort key of a row: a model instance, or a dict from `.values()`."""
        get = row.get if isinstance(row, Mapping) else functools.partial(getattr, row)
        values = tuple(get("pk" if f.name == "pk" else f.name) for f in self.fields)
        check_key(values, len(self.fields))
        return values  # type: ignore[return-value]  # check_key refused anything else

    def after(self, key: Sequence[SortValue]) -> Q:
        """Rows strictly after `key` in this order (the keyset condition):

            (a, b, id) after (x, y, z)  =     a > x
                                        OR (a = x AND b > y)
                                        OR (a = x AND b = y AND id > z)

        with `<` for descending fields. PostgreSQL serves each branch from an index on the fields.
        """
        check_key(key, len(self.fields))
        condition = Q()
        equal: dict[str, SortValue] = {}
        for field, value in zip(self.fields, key, strict=True):
            step = Q(**equal, **{f"{field.name}__{'lt' if field.descending else 'gt'}": value})
            condition |= step
            equal[field.name] = value
        return condition

    def sort_key(self) -> Callable[[tuple[SortValue, ...]], Any]:
        """A key function for sorting keys in this order (mixed directions included)."""
        return functools.cmp_to_key(self.compare)

    def compare(self, left: Sequence[SortValue], right: Sequence[SortValue]) -> int:
        for field, a, b in zip(self.fields, left, right, strict=True):
            if a != b:
                less = a < b  # type: ignore[operator]  # same field: same type (check_key)
                return (1 if less else -1) if field.descending else (-1 if less else 1)
        return 0


def check_key(key: Sequence[Any], size: int) -> None:
    if len(key) != size:
        raise BadOrdering(f"a sort key of {len(key)} value(s) for an ordering of {size}")
    for value in key:
        if type(value) not in (int, str):
            raise BadOrdering(
                f"sort value {value!r} ({type(value).__name__}) cannot be merged or resumed: "
                "order by non-null integer or text fields, ending with the id"
            )


def merge(pages: Iterable[Sequence[R]], *, ordering: Ordering, limit: int,
          key: Callable[[R], tuple[SortValue, ...]] | None = None) -> list[R]:
    """The first `limit` rows of the union of `pages`, each already sorted by `ordering`, in that
    order (a k-way merge: heapq.merge keeps one row per page in its heap). Rows with equal keys
    are the same row seen twice (ids are unique): only the first is kept."""
    if limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    key_of = key or ordering.key_of
    sort_key = ordering.sort_key()
    merged: list[R] = []
    last: tuple[SortValue, ...] | None = None
    for row in heapq.merge(*pages, key=lambda r: sort_key(key_of(r))):
        if len(merged) >= limit:
            break
        row_key = key_of(row)
        if last is not None and row_key == last:
            continue
        merged.append(row)
        last = row_key
    return merged
