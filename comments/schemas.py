"""Request and response shapes of the API (validated by django-ninja / pydantic)."""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Annotated, Any, Literal

from ninja import Field, Schema
from ninja.responses import NinjaJSONEncoder
from pydantic import BeforeValidator, PlainSerializer, StrictInt, WithJsonSchema

from comments.models import MAX_BODY, MAX_URL
from sites.schemas import Body, Text

Order = Literal["newest", "oldest", "top"]
MAX_ID = 2**63 - 1  # ids are PostgreSQL bigints
# Ids travel as decimal strings: they pass 2**53 (JavaScript's exact integers) twelve days after
# the id epoch, so a number would be rounded by every browser's JSON.parse.
ID_PATTERN = r"^[1-9][0-9]{0,18}$"
_ID_SCHEMA = {"type": "string", "pattern": ID_PATTERN, "examples": ["241315388745319891"]}
_ID_SHAPE = re.compile(ID_PATTERN)


def parse_id(value: Any) -> int:
    """An id as clients send it: a decimal string (never a JSON number, which a browser may
    already have rounded), within PostgreSQL's bigint."""
    if not isinstance(value, str) or not _ID_SHAPE.fullmatch(value) or int(value) > MAX_ID:
        raise ValueError(f"an id is a string of 1 to 19 digits, at most {MAX_ID}, "
                         "e.g. \"241315388745319891\"")
    return int(value)


def _id_out(value: Any) -> int:
    # Answers are built from model rows (ints); the string form is made on the way out.
    return int(value)


# An id in a request (body, path or query): a string, checked, handed to the view as an int.
IdIn = Annotated[int, BeforeValidator(parse_id), WithJsonSchema(_ID_SCHEMA)]
# An id in an answer: an int inside the service, a string in the JSON.
IdOut = Annotated[int, BeforeValidator(_id_out), PlainSerializer(str, return_type=str),
                  WithJsonSchema(_ID_SCHEMA)]


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
    id: IdOut
    url: str
    title: str
    comment_count: int
    created_at: datetime


class CommentIn(Schema):
    body: Body = Field(..., min_length=1, max_length=MAX_BODY, examples=["First!"])
    # A string (parse_id): JSON true, 1.0 or a number a browser may have rounded are not ids.
    parent_id: IdIn | None = None


class CommentEdit(Schema):
    body: Body = Field(..., min_length=1, max_length=MAX_BODY, examples=["First! (edited)"])


class CommentOut(Schema):
    id: IdOut
    thread_id: IdOut
    parent_id: IdOut | None
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
    """A comment page as the endpoint answers it: the bytes CommentPageOut's validation and
    django-ninja's JSON renderer make of the dict, written directly. Done once, when the page
    is built: the cache keeps these bytes and a hit is answered with them as they are.

    The page is built by comments.service from model rows (comment_dict: ids as ints, times
    from isoformat()), so validating it only re-checks what the rows' columns guarantee, and
    took a fifth of a page build's Python work (django-ninja's attribute getter, per field
    of every comment). tests/unit/test_page_json.py holds it to the validated rendering."""
    answer = {"items": [comment_out(item) for item in page["items"]],
              "next_cursor": page["next_cursor"]}
    return json.dumps(answer).encode()


def comment_json(item: dict[str, Any]) -> bytes:
    """One comment (comments.service.comment_dict's shape) as a write's answer: what
    CommentOut's validation and django-ninja's renderer make of it, written directly as for
    page_json (validating it cost a write 0.1-0.2 ms of its 1.6 ms of CPU, request_cost)."""
    return json.dumps(comment_out(item)).encode()


def comment_out(item: dict[str, Any]) -> dict[str, Any]:
    """CommentOut's fields, in its order: ids as strings (IdOut), times as the renderer writes
    them."""
    parent = item["parent_id"]
    return {
        "id": str(item["id"]), "thread_id": str(item["thread_id"]),
        "parent_id": None if parent is None else str(parent),
        "author": item["author"], "author_name": item["author_name"], "body": item["body"],
        "deleted": item["deleted"], "score": item["score"], "depth": item["depth"],
        "created_at": _rendered_time(item["created_at"]),
        "edited_at": _rendered_time(item["edited_at"]),
        "replies": [comment_out(reply) for reply in item["replies"]],
    }


def _rendered_time(iso: str | None) -> str | None:
    """A datetime's isoformat() as DjangoJSONEncoder, django-ninja's renderer, writes the
    datetime: milliseconds, and UTC as "Z"."""
    if iso is None:
        return None
    if len(iso) > 19 and iso[19] == ".":  # microseconds: cut to milliseconds
        iso = iso[:23] + iso[26:]
    if iso.endswith("+00:00"):
        iso = iso[:-6] + "Z"
    return iso


def thread_json(thread: Any) -> bytes:
    """A thread as GET .../threads/<id> answers it: ThreadOut rendered as django-ninja renders
    a handler's answer (its JSON renderer, over the validated schema's dump), without ninja's
    per-request wrapping of the answer in a response model of its own."""
    return json.dumps(ThreadOut.model_validate(thread).model_dump(), cls=NinjaJSONEncoder).encode()


class VoteIn(Schema):
    # Strict (true and 1.0 are not 1); pydantic cannot make a Literal strict, so a range.
    value: StrictInt = Field(..., ge=-1, le=1, examples=[1],
                             description="1 up, -1 down, 0 removes the vote.")


class VoteOut(Schema):
    comment_id: IdOut
    value: int
    score: int


class CountsOut(Schema):
    counts: dict[str, int]
