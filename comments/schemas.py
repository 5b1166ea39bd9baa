"""Request and response shapes of the API (validated by django-ninja / pydantic)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema
from ninja.responses import NinjaJSONEncoder
from pydantic import StrictInt

from comments.models import MAX_BODY, MAX_URL
from sites.schemas import Body, Text

Order = Literal["newest", "oldest", "top"]
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints


class UserTokenIn(Schema):
    user_id: Body = Field(..., min_length=1, max_length=150, examples=["u42"])
    name: Text = Field("", max_length=150, examples=["Ann"])


class UserTokenOut(Schema):
    token: str


class ThreadIn(Schema):
    url: Body = Field(..., min_length=1, max_length=MAX_URL,
                      examples=["https://acme.example/posts/1"])
    title: Text = Field("", max_length=300, examples=["Post 1"])


class ThreadOut(Schema):
    id: int
    url: str
    title: str
    comment_count: int
    created_at: datetime


class CommentIn(Schema):
    body: Body = Field(..., min_length=1, max_length=MAX_BODY, examples=["First!"])
    # Strict: JSON true, 1.0 or "1" are not ids (lax pydantic would take them as 1).
    parent_id: StrictInt | None = Field(None, ge=1, le=MAX_ID)


class CommentEdit(Schema):
    body: Body = Field(..., min_length=1, max_length=MAX_BODY, examples=["First! (edited)"])


class CommentOut(Schema):
    id: int
    thread_id: int
    parent_id: int | None
    author: str
    author_name: str
    body: str
    deleted: bool
    score: int
    depth: int
    created_at: datetime
    edited_at: datetime | None
    replies: list[CommentOut] = []


class CommentPageOut(Schema):
    items: list[CommentOut]
    next_cursor: str | None


def page_json(page: dict[str, Any]) -> bytes:
    """A comment page as the endpoint answers it: validated by CommentPageOut and rendered by
    django-ninja's JSON renderer, as ninja would render the dict. Done once, when the page is
    built: the cache keeps these bytes and a hit is answered with them as they are."""
    answer = CommentPageOut.model_validate(page).model_dump()
    return json.dumps(answer, cls=NinjaJSONEncoder).encode()


class VoteIn(Schema):
    # Strict (true and 1.0 are not 1); pydantic cannot make a Literal strict, so a range.
    value: StrictInt = Field(..., ge=-1, le=1, examples=[1],
                             description="1 up, -1 down, 0 removes the vote.")


class VoteOut(Schema):
    comment_id: int
    value: int
    score: int


class CountsOut(Schema):
    counts: dict[str, int]
