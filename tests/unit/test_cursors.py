"""Opaque pagination cursors (comments/cursors.py): what comes back in is checked."""

from __future__ import annotations

import base64
import json

import pytest

from comments.cursors import BadCursor, decode, encode


def raw_cursor(payload: object) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


@pytest.mark.parametrize(
    ("order", "key"),
    [
        ("newest", [1234567890123]),
        ("oldest", [1]),
        ("top", [-3, 99]),
        ("top", [2**63 - 1, -(2**63 - 1)]),
    ],
)
def test_a_cursor_round_trips_for_its_order(order: str, key: list[int]) -> None:
    cursor = encode(order, key)
    assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # URL-safe as is
    assert decode(cursor, order) == key  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("made_for", "used_for"),
    [("newest", "oldest"), ("oldest", "newest"), ("newest", "top"), ("top", "newest")],
)
def test_a_cursor_of_another_order_is_refused(made_for: str, used_for: str) -> None:
    key = [5, 6] if made_for == "top" else [6]
    with pytest.raises(BadCursor, match=f"order={used_for!r}"):
        decode(encode(made_for, key), used_for)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",  # not base64
        "abc",  # base64 of bytes that are not JSON
        base64.urlsafe_b64encode(b"\xff\xfe").decode(),  # not UTF-8
        raw_cursor({"order": "newest"}),  # JSON, not a list
        raw_cursor(["newest"]),  # too short
        raw_cursor(["newest", 1, 2]),  # too long
        raw_cursor(["newest", "1"]),  # a string, not an int
        raw_cursor(["newest", 1.5]),
        raw_cursor(["newest", True]),  # bool is an int to Python, not to us
        raw_cursor(["newest", 2**63]),  # beyond bigint
        raw_cursor(["newest", -(2**63)]),
        raw_cursor(["newest", None]),
    ],
)
def test_garbage_is_a_bad_cursor(cursor: str) -> None:
    with pytest.raises(BadCursor):
        decode(cursor, "newest")


def test_a_bad_cursor_is_a_value_error() -> None:
    assert issubclass(BadCursor, ValueError)
