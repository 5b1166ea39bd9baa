"""The SQL a test's code sends through one Django connection, as the execute wrappers see it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import connections


@contextmanager
def statements(alias: str) -> Iterator[list[str]]:
    """Inside the block, every statement run on `alias`'s connection, in order."""
    sent: list[str] = []

    def note(execute: Callable[..., Any], sql: str, params: Any, many: bool,
             context: dict[str, Any]) -> Any:
        sent.append(sql)
        return execute(sql, params, many, context)

    with connections[alias].execute_wrapper(note):
        yield sent
