"""WAL positions (LSNs) as 64-bit ints, and their one printed form.

PostgreSQL prints a pg_lsn as two hex numbers, "16/B374D848" (high and low 32 bits). The service
keeps positions as ints ((X << 32) + Y) so they compare and subtract as numbers (causal tokens,
the directory's min-LSN, a move's flip position), reads them from the server as ints
(`pg_lsn - '0/0'` is the byte offset), and prints them the way PostgreSQL does.
"""

from __future__ import annotations

import re
from typing import Any, LiteralString

import psycopg

from shards import pg

_LSN_RE = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")
LSN_MAX = (1 << 64) - 1

# The server's positions as ints; a Django cursor or a psycopg connection runs these alike.
CURRENT_LSN_SQL: LiteralString = "SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"
# Past every record inserted so far, commit records included, flushed or not
# (synchronous_commit=off): the position a reader must have replayed to see them.
INSERT_LSN_SQL: LiteralString = "SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn"


def parse_lsn(text: str) -> int:
    """A pg_lsn as PostgreSQL prints it ("16/B374D848") -> a 64-bit int ((X << 32) + Y)."""
    match = _LSN_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"invalid LSN {text!r}: expected two hex numbers of up to 8 digits as X/Y, "
            "as pg_current_wal_lsn()::text prints it (e.g. '16/B374D848')"
        )
    return (int(match[1], 16) << 32) + int(match[2], 16)


def format_lsn(value: int) -> str:
    """A 64-bit int -> the pg_lsn text PostgreSQL prints ("16/B374D848")."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= LSN_MAX:
        raise ValueError(f"invalid LSN {value!r}: expected an int from 0 to 2**64 - 1")
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def current_lsn(conn: psycopg.Connection[Any]) -> int:
    """A primary's WAL write position."""
    return int(pg.fetch_value(conn, CURRENT_LSN_SQL))


def insert_lsn(conn: psycopg.Connection[Any]) -> int:
    """A primary's WAL insert position: see INSERT_LSN_SQL."""
    return int(pg.fetch_value(conn, INSERT_LSN_SQL))
