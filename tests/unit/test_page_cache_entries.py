"""A cached page is stored with the write mark it was built at (comments/cache.py) and served
only to readers of that mark or an earlier one."""

from __future__ import annotations

from comments.cache import _page_at

BODY = b'{"items": [], "next_cursor": null}'


def test_a_page_is_served_at_the_mark_it_was_built_at() -> None:
    assert _page_at(b"51\n" + BODY, 51) == BODY
    assert _page_at("51\n" + BODY.decode(), 51) == BODY
    assert _page_at(b"0\n" + BODY, 0) == BODY


def test_a_page_built_after_the_readers_mark_has_every_write_it_needs() -> None:
    assert _page_at(b"52\n" + BODY, 51) == BODY


def test_a_page_built_before_a_write_or_malformed_is_a_miss() -> None:
    assert _page_at(b"51\n" + BODY, 52) is None  # the thread was written since
    assert _page_at(None, 51) is None
    assert _page_at(b"x51\n" + BODY, 51) is None
    assert _page_at(BODY, 51) is None  # no mark line
    assert _page_at(b"5\n" + BODY, 51) is None  # an older mark, though a prefix of this one
