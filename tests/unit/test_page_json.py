"""A comment page's cached bytes (comments.schemas.page_json) are exactly what validating the page
with CommentPageOut and rendering it with django-ninja's renderer gives; so are a write's answer
(comment_json, against CommentOut), and a live event shows the comment as that answer does."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from ninja.responses import NinjaJSONEncoder

from comments.live import event_json
from comments.schemas import CommentOut, CommentPageOut, comment_json, page_json


def validated(page: dict[str, Any]) -> bytes:
    """What the endpoint answered before page_json wrote the bytes itself."""
    return json.dumps(CommentPageOut.model_validate(page).model_dump(),
                      cls=NinjaJSONEncoder).encode()


def comment(id_: int, *, parent: int | None = None, depth: int = 0, when: datetime,
            edited: datetime | None = None, deleted: bool = False, body: str = "hi",
            replies: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    # The shape of comments.service.comment_dict, built from a model row.
    return {"id": id_, "thread_id": 2**62 + 7, "parent_id": parent, "author": "u42",
            "author_name": "Ann \"the\" Ünïcode ✓", "body": "" if deleted else body,
            "deleted": deleted, "score": -3 if deleted else 12, "depth": depth,
            "created_at": when.isoformat(), "edited_at": edited.isoformat() if edited else None,
            "replies": replies or []}


EXACT = datetime(2026, 11, 30, 12, 0, 0, tzinfo=UTC)  # no microseconds
FINE = datetime(2026, 11, 30, 12, 0, 0, 123456, tzinfo=UTC)
ROUNDISH = datetime(2026, 1, 2, 3, 4, 5, 999, tzinfo=UTC)  # 0.000999 s: "000" milliseconds
ELSEWHERE = datetime(2026, 6, 1, 8, 30, 0, 5000, tzinfo=timezone(timedelta(hours=2)))


@pytest.mark.parametrize("when", [EXACT, FINE, ROUNDISH, ELSEWHERE])
@pytest.mark.parametrize("cursor", [None, "WyJuZXdlc3QiLCAxMjNd"])
def test_page_bytes_match_the_validated_rendering(when: datetime, cursor: str | None) -> None:
    deep = comment(9, parent=8, depth=3, when=when, body="<script>alert('x')</script>\n\t")
    page = {
        "items": [
            comment(2**63 - 1, when=when, edited=FINE, replies=[
                comment(5, parent=2**63 - 1, depth=1, when=EXACT, deleted=True, replies=[
                    comment(8, parent=5, depth=2, when=ROUNDISH, replies=[deep]),
                ]),
                comment(6, parent=2**63 - 1, depth=1, when=when, edited=when),
            ]),
            comment(1, when=when, deleted=True),
        ],
        "next_cursor": cursor,
    }
    assert page_json(page) == validated(page)


def test_an_empty_page_matches_too() -> None:
    page = {"items": [], "next_cursor": None}
    assert page_json(page) == validated(page) == b'{"items": [], "next_cursor": null}'


@pytest.mark.parametrize("when", [EXACT, FINE, ROUNDISH, ELSEWHERE])
@pytest.mark.parametrize("deleted", [False, True])
def test_a_written_comment_matches_the_validated_rendering(when: datetime, deleted: bool) -> None:
    written = comment(2**63 - 1, parent=5, depth=1, when=when, edited=FINE, deleted=deleted,
                      body="\u2028 \"quoted\" \\ ✓")
    assert comment_json(written) == json.dumps(CommentOut.model_validate(written).model_dump(),
                                               cls=NinjaJSONEncoder).encode()


def test_a_live_event_shows_the_comment_as_the_write_answered_it() -> None:
    written = comment(2**62 + 1, when=FINE, edited=FINE)
    event = json.loads(event_json("edited", written))
    assert event == {"type": "edited", "comment": json.loads(comment_json(written))}
    assert event["comment"]["id"] == str(2**62 + 1)  # ids as strings, as the API writes them
