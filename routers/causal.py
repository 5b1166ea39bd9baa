"""Read-your-writes across requests: signed causal tokens.

After a request writes to a shard, the client gets that shard primary's WAL insert position,
signed (cookie and response header, one entry per shard). A later read carrying the token goes to
a replica that has replayed past it, else to the primary. A malformed, forged or expired token
never causes an error or a stale read: the request just reads from primaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from django.core import signing
from django.db import DatabaseError, connections, transaction

from routers.state import current_state
from shards.lsn import INSERT_LSN_SQL

# The commit and the position after it in one message (Django's cursors send a parameterless
# query as one simple-protocol message, run statement by statement): one round trip, and behind
# PgBouncer's transaction pooling one server connection, which it keeps until the whole
# message is answered.
COMMIT_AND_POSITION_SQL = "COMMIT; " + INSERT_LSN_SQL

COOKIE = "shardsvc_causal"
HEADER = "X-Causal-Token"
_SALT = "shardsvc.causal"
# Past this age a replica has long replayed the write; dropping old tokens keeps them small.
MAX_AGE_SECONDS = 3600


def encode(tokens: dict[str, int], versions: dict[int, int] | None = None) -> str:
    """Shard -> WAL position written, plus tenant id -> directory version seen when writing
    (a worker holding an older placement of that tenant then reloads it)."""
    payload = {name: format(lsn, "x") for name, lsn in sorted(tokens.items())}
    for tenant_id, version in sorted((versions or {}).items()):
        payload[f"t:{tenant_id}"] = format(version, "x")
    return signing.dumps(payload, salt=_SALT, compress=True)


def decode(raw: str) -> tuple[dict[str, int], dict[int, int]] | None:
    """(positions, tenant versions), or None when the value is not a valid, unexpired token."""
    try:
        payload = signing.loads(raw, salt=_SALT, max_age=MAX_AGE_SECONDS)
    except (signing.BadSignature, ValueError, TypeError, OverflowError):
        return None
    if not isinstance(payload, dict):
        return None
    tokens: dict[str, int] = {}
    versions: dict[int, int] = {}
    for name, value in payload.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return None
        try:
            number = int(value, 16)
            if name.startswith("t:"):
                versions[int(name[2:])] = number
            else:
                tokens[name] = number
        except ValueError:
            return None
    return tokens, versions


def merge(*sources: dict[str, int]) -> dict[str, int]:
    merged: dict[str, int] = {}
    for source in sources:
        for name, lsn in source.items():
            merged[name] = max(lsn, merged.get(name, 0))
    return merged


def position_after_writes(cluster: str) -> int | None:
    """The position a token must carry for this request's writes on `cluster`: the one
    already read after its last write when there is one, else read now."""
    state = current_state()
    known = state.position_after_writes(cluster) if state is not None else None
    if known is not None:
        return known
    position = primary_position(cluster)
    if state is not None and position is not None:
        state.remember_position(cluster, position)
    return position


@contextmanager
def write_transaction(cluster: str) -> Iterator[None]:
    """`transaction.atomic` on `cluster`'s primary whose commit also reads the primary's WAL
    position for the request's causal token (see `position_after_writes`): one round trip
    instead of a COMMIT and a query after it.

    Only for the outermost transaction (nested, it is a savepoint and behaves as atomic) and
    only when the request wrote to `cluster`; the COMMIT is sent here, and Django's own commit
    at the end of the block then finds no transaction open and sends nothing. An error of the
    COMMIT (or anything before it) rolls back as atomic does.
    """
    connection = connections[cluster]
    outermost = not connection.in_atomic_block
    with transaction.atomic(using=cluster):
        yield
        state = current_state()
        if outermost and state is not None and state.wrote_to(cluster):
            with connection.cursor() as cursor:
                cursor.execute(COMMIT_AND_POSITION_SQL)
                cursor.nextset()  # past the COMMIT's result, to the position's
                state.remember_position(cluster, int(cursor.fetchone()[0]))


def primary_position(cluster: str) -> int | None:
    """The primary's WAL insert position now, after the request's commits (see
    `shards.lsn.INSERT_LSN_SQL` for why the insert position)."""
    try:
        with connections[cluster].cursor() as cursor:
            cursor.execute(INSERT_LSN_SQL)
            return int(cursor.fetchone()[0])
    except DatabaseError:
        return None
