"""Opaque, signed cursors for cross-shard pages.

A cursor holds the sort key of the last row a page showed, the ordering it belongs to and a
fingerprint of the query's scope (its filters), signed with the service's secret key under a
salt of its own (django.core.signing): a client can hand it back, not forge or edit it, and a
cursor of one query is refused by another. It names no shard and no per-shard position: the next
page asks every shard for the rows after that one key (shards/merge.py says why that holds across
tenant moves), so a cursor also stays valid when shards are added or tenants move.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from django.core import signing

from shards.merge import BadOrdering, Ordering, SortValue, check_key

SALT = "shardsvc.scatter.cursor"
MAX_CURSOR = 2000  # characters: a key of a few short values signs to well under this


class BadCursor(ValueError):
    """A cursor that was not issued for this query (or not by this service)."""


@dataclass(frozen=True)
class Position:
    ordering: Ordering
    key: tuple[SortValue, ...]


def scope_fingerprint(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def encode_cursor(ordering: Ordering, key: Sequence[SortValue], *, scope: str = "") -> str:
    check_key(key, len(ordering.fields))
    payload = {"o": ordering.specs, "k": list(key), "s": scope_fingerprint(scope)}
    return signing.dumps(payload, salt=SALT, compress=True)


def decode_cursor(cursor: str, ordering: Ordering, *, scope: str = "") -> Position:
    """The position a cursor names, checked against the query it is used with."""
    if not isinstance(cursor, str) or not cursor or len(cursor) > MAX_CURSOR:
        raise BadCursor("malformed cursor: pass back next_cursor unchanged")
    try:
        payload = signing.loads(cursor, salt=SALT)
    except (signing.BadSignature, ValueError, zlib.error):
        # ValueError, zlib.error: correctly signed bytes that are not compressed JSON.
        raise BadCursor("invalid cursor: pass back next_cursor unchanged") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("k"), list):
        raise BadCursor("invalid cursor: pass back next_cursor unchanged")
    if payload.get("o") != ordering.specs:
        raise BadCursor(f"this cursor belongs to another order ({payload.get('o')!r}), "
                        f"not {ordering.specs!r}: start again without a cursor")
    if payload.get("s") != scope_fingerprint(scope):
        raise BadCursor("this cursor belongs to a query with other filters: start again "
                        "without a cursor")
    key = tuple(payload["k"])
    try:
        check_key(key, len(ordering.fields))
    except BadOrdering as exc:
        raise BadCursor(f"invalid cursor: {exc}") from None
    return Position(ordering=ordering, key=key)
