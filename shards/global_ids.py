"""64-bit, time-ordered global ids, generated in PostgreSQL (Instagram's scheme).

    id = (milliseconds since 2026-01-01 UTC) << 23 | generator_id << 10 | sequence % 1024

41 bits of time last about 69 years; 13 bits name up to 8192 generators (one per database:
control is 0, each shard gets its own from the shard registry, so ids stay unique across shards
and a row keeps its id when its tenant moves); 10 bits allow 1024 ids per millisecond per shard.
"""

from __future__ import annotations

from django.core.management.base import CommandError
from django.db import connections, transaction
from django.db.models import BigIntegerField, Func

EPOCH_MS = 1767225600000  # 2026-01-01T00:00:00Z
GENERATOR_BITS = 13
SEQUENCE_BITS = 10
MAX_GENERATOR_ID = (1 << GENERATOR_BITS) - 1
CONTROL_GENERATOR_ID = 0

INSTALL_SQL = f"""
CREATE TABLE IF NOT EXISTS shardsvc_generator (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    generator_id integer NOT NULL CHECK (generator_id BETWEEN 0 AND {MAX_GENERATOR_ID}),
    shard_name text NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS shardsvc_id_seq;
CREATE OR REPLACE FUNCTION shardsvc_next_id() RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    generator integer;
    seq bigint;
    now_ms bigint;
BEGIN
    SELECT generator_id INTO generator FROM shardsvc_generator;
    IF generator IS NULL THEN
        RAISE EXCEPTION 'this database has no global id generator yet'
            USING HINT = 'run migrations on it (manage.py migrate_shards), which assigns one';
    END IF;
    seq := nextval('shardsvc_id_seq') % {1 << SEQUENCE_BITS};
    now_ms := floor(extract(epoch FROM clock_timestamp()) * 1000);
    RETURN ((now_ms - {EPOCH_MS}) << {GENERATOR_BITS + SEQUENCE_BITS})
        | (generator::bigint << {SEQUENCE_BITS}) | seq;
END
$$;
"""


class NextGlobalId(Func):
    """`db_default=NextGlobalId()`: the database fills the id on insert."""

    function = "shardsvc_next_id"
    arity = 0
    output_field = BigIntegerField()


def id_millis(global_id: int) -> int:
    """When an id was made, in unix milliseconds."""
    return (global_id >> (GENERATOR_BITS + SEQUENCE_BITS)) + EPOCH_MS


def first_id_at(unix_millis: int) -> int:
    """The smallest id made at or after `unix_millis` (0 for any time before the epoch)."""
    return max(unix_millis - EPOCH_MS, 0) << (GENERATOR_BITS + SEQUENCE_BITS)


def split_id(global_id: int) -> tuple[int, int, int]:
    """(unix milliseconds, generator id, sequence) of an id."""
    sequence = global_id & ((1 << SEQUENCE_BITS) - 1)
    generator = (global_id >> SEQUENCE_BITS) & MAX_GENERATOR_ID
    return id_millis(global_id), generator, sequence


def install(alias: str, *, generator_id: int, name: str) -> None:
    """Create the generator function on one primary and pin its generator id.

    Runs before that database's migrations (tables use the function as a column default).
    A database that already carries another generator id is refused: two databases sharing an
    id could hand out the same ids.
    """
    # One transaction: one commit (a wait for the disk) instead of one per statement.
    with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
        cursor.execute(INSTALL_SQL)
        cursor.execute("SELECT generator_id, shard_name FROM shardsvc_generator")
        row = cursor.fetchone()
        if row is None:
            cursor.execute(
                "INSERT INTO shardsvc_generator (generator_id, shard_name) VALUES (%s, %s)",
                [generator_id, name],
            )
        elif tuple(row) != (generator_id, name):
            raise CommandError(
                f"database {alias!r} holds global id generator {row[0]} of {row[1]!r}, but the "
                f"shard registry says {name!r} is generator {generator_id}: the topology file "
                "points this alias at another shard's server; fix the file"
            )
