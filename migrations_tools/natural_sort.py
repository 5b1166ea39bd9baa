"""Order names as people read them: demo-3 before demo-10, shard_2 before shard_10."""

from __future__ import annotations

import re

_PARTS = re.compile(r"(\d+)")


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """A sort key comparing runs of digits as numbers and the rest case-insensitively. Each
    part is tagged (0 number, 1 text) so a number and a word never compare directly."""
    key: list[tuple[int, int | str]] = []
    for part in _PARTS.split(text):
        if not part:
            continue
        key.append((0, int(part)) if part.isdigit() else (1, part.casefold()))
    return tuple(key)
