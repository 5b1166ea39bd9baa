"""The cross-shard merge, keyset condition and signed cursors (shards/merge.py,
shards/scatter_cursor.py, routers.scatter_queries.combine): pure logic, no servers."""

from __future__ import annotations

import random

import pytest
from django.core import signing
from django.db.models import Q

from routers.scatter_queries import combine
from shards.merge import BadOrdering, Ordering, merge
from shards.scatter_cursor import SALT, BadCursor, decode_cursor, encode_cursor

NEWEST = Ordering.parse(["-id"])
TOP = Ordering.parse(["-score", "id"])


def shards_of(rows: list[dict], count: int, seed: int) -> list[list[dict]]:
    rng = random.Random(seed)
    parts: list[list[dict]] = [[] for _ in range(count)]
    for row in rows:
        parts[rng.randrange(count)].append(row)
    return parts


@pytest.mark.parametrize("ordering", [NEWEST, TOP, Ordering.parse(["author", "-id"])])
@pytest.mark.parametrize("seed", range(5))
def test_the_merge_of_sorted_shards_equals_the_sorted_union(ordering: Ordering, seed: int) -> None:
    rng = random.Random(seed)
    rows = [{"id": i, "score": rng.randrange(-3, 4), "author": rng.choice("abc")}
            for i in rng.sample(range(1, 10**6), 300)]
    key = ordering.sort_key()
    parts = [sorted(p, key=lambda r: key(ordering.key_of(r)))
             for p in shards_of(rows, 3, seed)]
    union = sorted(rows, key=lambda r: key(ordering.key_of(r)))
    assert merge(parts, ordering=ordering, limit=1000) == union
    assert merge(parts, ordering=ordering, limit=37) == union[:37]


def test_paging_by_the_last_key_visits_every_row_once() -> None:
    rows = [{"id": i} for i in random.Random(1).sample(range(1, 10**9), 1000)]
    parts = [sorted(p, key=lambda r: -r["id"]) for p in shards_of(rows, 3, 1)]
    seen: list[int] = []
    last: tuple | None = None
    while True:
        # What each shard answers to "rows after the key, limit + 1": the limit pushed down.
        pushed = [[r for r in p if last is None or r["id"] < last[0]][:38] for p in parts]
        page = merge(pushed, ordering=NEWEST, limit=38)
        seen += [r["id"] for r in page[:37]]
        if len(page) <= 37:
            break
        last = NEWEST.key_of(page[36])
    assert seen == sorted((r["id"] for r in rows), reverse=True)


def test_a_row_seen_on_two_shards_is_shown_once() -> None:
    assert merge([[{"id": 3}, {"id": 1}], [{"id": 3}, {"id": 2}]], ordering=NEWEST,
                 limit=10) == [{"id": 3}, {"id": 2}, {"id": 1}]


def test_the_keyset_condition_follows_each_field_direction() -> None:
    assert NEWEST.after((10,)) == Q(id__lt=10)
    assert TOP.after((5, 7)) == Q(score__lt=5) | Q(score=5, id__gt=7)


@pytest.mark.parametrize(("specs", "message"), [
    (["-score"], "must end with 'id'"),
    ([], "needs a list"),
    ("-id", "needs a list"),
    (["id", "-id"], "names a field twice"),
    (["--id"], "bad order field"),
])
def test_orderings_that_cannot_merge_are_refused(specs, message: str) -> None:
    with pytest.raises(BadOrdering, match=message):
        Ordering.parse(specs)


@pytest.mark.parametrize("value", [None, 1.5, True, b"x"])
def test_values_a_cursor_cannot_carry_are_refused(value) -> None:
    with pytest.raises(BadOrdering, match="cannot be merged or resumed"):
        TOP.key_of({"score": value, "id": 1})


def test_a_cursor_round_trips_and_is_opaque() -> None:
    cursor = encode_cursor(TOP, (5, 123456789012345678), scope="author='u1'")
    assert "123456789012345678" not in cursor
    position = decode_cursor(cursor, TOP, scope="author='u1'")
    assert position.key == (5, 123456789012345678)


def test_a_cursor_of_another_query_or_order_is_refused() -> None:
    cursor = encode_cursor(NEWEST, (42,), scope="author='u1'")
    with pytest.raises(BadCursor, match="other filters"):
        decode_cursor(cursor, NEWEST, scope="author='u2'")
    with pytest.raises(BadCursor, match="another order"):
        decode_cursor(cursor, Ordering.parse(["id"]), scope="author='u1'")


def test_an_edited_or_forged_cursor_is_refused() -> None:
    cursor = encode_cursor(NEWEST, (42,))
    with pytest.raises(BadCursor, match="invalid cursor"):
        decode_cursor(cursor[:-2] + ("A" if cursor[-2] != "A" else "B") + cursor[-1], NEWEST)
    forged = signing.dumps({"o": ["-id"], "k": [42], "s": ""}, salt="another.salt")
    with pytest.raises(BadCursor, match="invalid cursor"):
        decode_cursor(forged, NEWEST)
    wrong_shape = signing.dumps({"o": ["-id"], "k": [None], "s": encode_scope("")}, salt=SALT)
    with pytest.raises(BadCursor, match="invalid cursor"):
        decode_cursor(wrong_shape, NEWEST)
    for garbage in ("", "x" * 3000, "not a cursor"):
        with pytest.raises(BadCursor):
            decode_cursor(garbage, NEWEST)


def encode_scope(scope: str) -> str:
    from shards.scatter_cursor import scope_fingerprint

    return scope_fingerprint(scope)


def test_aggregates_combine_exactly() -> None:
    parts = [{"a": 2, "b": 5}, {"a": 3}, {}, {"b": 1, "c": 7}]
    assert combine("count", parts) == {"a": 5, "b": 6, "c": 7}
    assert combine("sum", parts) == {"a": 5, "b": 6, "c": 7}
    assert combine("min", parts) == {"a": 2, "b": 1, "c": 7}
    assert combine("max", parts) == {"a": 3, "b": 5, "c": 7}
    # A shard with no rows answers None for sum/min/max: it neither adds nor wins.
    assert combine("max", [{None: None}, {None: 4}, {None: None}]) == {None: 4}
    assert combine("sum", [{None: None}]) == {None: None}
