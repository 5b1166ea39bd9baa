"""Shapes of the sites API, and the text checks every API's input shares (validated by
django-ninja / pydantic). The comments app builds on sites, so its shapes use these checks."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated

from ninja import Field, Schema
from pydantic import AfterValidator


def _storable(value: str) -> str:
    # PostgreSQL text cannot hold NUL, and lone surrogates cannot be encoded as UTF-8: refuse
    # them here with a 422 rather than fail in the database.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("must be valid Unicode text") from None
    return value


# Characters that show nothing: separators (Zs, Zl, Zp), controls (Cc) and format characters
# (Cf: zero-width space, joiners, BOM, bidi marks), plus the few invisible letters and marks
# that fill "blank" names elsewhere (Hangul fillers, Braille blank, Khmer inherent vowels,
# variation selectors, combining grapheme joiner).
_INVISIBLE_CATEGORIES = frozenset({"Zs", "Zl", "Zp", "Cc", "Cf"})
_INVISIBLE_CHARACTERS = frozenset(
    "\u034f\u115f\u1160\u17b4\u17b5\u2800\u3164\uffa0"
    + "".join(chr(c) for c in range(0x180B, 0x1810))
    + "".join(chr(c) for c in range(0xFE00, 0xFE10))
)


def is_blank(value: str) -> bool:
    """True when `value` shows nothing: no character in it is visible content."""
    return all(
        ch in _INVISIBLE_CHARACTERS or unicodedata.category(ch) in _INVISIBLE_CATEGORIES
        for ch in value
    )


def _not_blank(value: str) -> str:
    if is_blank(value):
        raise ValueError("must not be empty or only whitespace or invisible characters")
    return value


Text = Annotated[str, AfterValidator(_storable)]
Body = Annotated[str, AfterValidator(_storable), AfterValidator(_not_blank)]


class ErrorOut(Schema):
    error: str
    message: str


class SiteIn(Schema):
    slug: str = Field(
        ..., min_length=1, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$",
        examples=["acme"],
    )
    name: Body = Field(..., min_length=1, max_length=200, examples=["Acme"])
    shard: Text | None = Field(None, max_length=40, description="Omit to let placement decide.")


class SiteOut(Schema):
    slug: str
    name: str
    shard: str
    created_at: datetime


class SiteCreatedOut(SiteOut):
    api_key: str = Field(..., description="Shown once; only its hash is stored. Secret: for "
                         "the site's backend only, refused from browsers.")
    public_key: str = Field(..., description="The publishable key, for web pages (the widget); "
                            "works only from the origins set with PUT /ops/sites/{slug}/origins.")


class OriginsIn(Schema):
    origins: list[Text] = Field(..., max_length=20,
                                examples=[["https://blog.example", "http://localhost:8080"]])
    new_public_key: bool = Field(False, description="Replace the publishable key too.")


class OriginsOut(Schema):
    slug: str
    public_key: str
    origins: list[str]


class SitePageOut(Schema):
    items: list[SiteOut]
    next_cursor: str | None
