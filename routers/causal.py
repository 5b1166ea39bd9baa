"""Read-your-writes across requests: signed causal tokens.

After a request writes to a shard, the client gets that shard primary's WAL insert position,
signed (cookie and response header, one entry per shard). A later read carrying the token goes to
a replica that has replayed past it, else to the primary. A malformed, forged or expired token
never causes an error or a stale read: the request just reads from primaries.
"""

from __future__ import annotations

from django.core import signing
from django.db import DatabaseError, connections

COOKIE = "shardsvc_causal"
HEADER = "X-Causal-Token"
_SALT = "shardsvc.causal"
# Past this age a replica has long replayed the write; dropping old tokens keeps them small.
MAX_AGE_SECONDS = 3600


def encode(tokens: dict[str, int]) -> str:
    return signing.dumps({name: format(lsn, "x") for name, lsn in sorted(tokens.items())},
                         salt=_SALT, compress=True)


def decode(raw: str) -> dict[str, int] | None:
    """The tokens, or None when the value is not a valid, unexpired token of ours."""
    try:
        payload = signing.loads(raw, salt=_SALT, max_age=MAX_AGE_SECONDS)
    except (signing.BadSignature, ValueError, TypeError, OverflowError):
        return None
    if not isinstance(payload, dict):
        return None
    tokens: dict[str, int] = {}
    for name, lsn in payload.items():
        if not isinstance(name, str) or not isinstance(lsn, str):
            return None
        try:
            tokens[name] = int(lsn, 16)
        except ValueError:
            return None
    return tokens


def merge(*sources: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for source in sources:
        for name, lsn in source.items():
            merged[name] = max(lsn, merged.get(name, 0))
    return merged


def primary_position(cluster: str) -> int | None:
    """The primary's WAL insert position now, after the request's commits. The insert position
    is past every record already inserted, commit records included, even when they are not
    flushed yet (synchronous_commit=off)."""
    try:
        with connections[cluster].cursor() as cursor:
            cursor.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn")
            return int(cursor.fetchone()[0])
    except DatabaseError:
        return None
