"""Opaque pagination cursors: base64 of the sort key of the last item shown."""

from __future__ import annotations

import base64
import binascii
import json

from comments.schemas import Order


class BadCursor(ValueError):
    pass


def encode(order: str, key: list[int]) -> str:
    raw = json.dumps([order, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str, order: Order) -> list[int]:
    """The sort key, checked: a cursor of another order or any garbage is a BadCursor."""
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise BadCursor("malformed cursor: pass back next_cursor unchanged") from exc
    size = 3 if order == "top" else 2
    if (
        not isinstance(payload, list)
        or len(payload) != size
        or payload[0] != order
        or not all(isinstance(v, int) and not isinstance(v, bool) for v in payload[1:])
        or not all(abs(v) < 2**63 for v in payload[1:])
    ):
        raise BadCursor(f"this cursor does not belong to order={order!r}")
    return payload[1:]
