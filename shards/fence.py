"""The write fence: during a move's cutover, the source shard itself refuses the moving
tenant's writes, so no write can land on the old shard whatever a worker's cache says.

Every sharded table carries a row trigger (installed after migrations) that looks the row's
tenant up in `shardsvc_fence`, a table that is empty except during a cutover. A fenced write
fails with SQLSTATE SV001. The service catches it, refreshes the tenant's placement, waits
(bounded) and retries on the new shard: writers see a pause, not an error
(`routers.write_hold.retry_writes`, which holds writes through a failover the same way).
"""

from __future__ import annotations

from django.db import DatabaseError, connections

FENCE_SQLSTATE = "SV001"

INSTALL_SQL = f"""
CREATE TABLE IF NOT EXISTS shardsvc_fence (
    tenant_id bigint PRIMARY KEY,
    job_id bigint NOT NULL,
    fenced_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- A lease: a mover that dies mid-cutover does not leave its tenant unwritable forever.
    -- Made permanent ('infinity') just before the flip, and kept until the source rows are gone.
    expires_at timestamptz NOT NULL DEFAULT 'infinity'
);
CREATE OR REPLACE FUNCTION shardsvc_fence_check() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('shardsvc.fence_bypass', true), '') = 'on' THEN
        RETURN coalesce(NEW, OLD);
    END IF;
    IF (TG_OP <> 'DELETE'
            AND EXISTS (SELECT 1 FROM shardsvc_fence f WHERE f.tenant_id = NEW.tenant_id
                        AND f.expires_at > clock_timestamp()))
       OR (TG_OP <> 'INSERT'
            AND EXISTS (SELECT 1 FROM shardsvc_fence f WHERE f.tenant_id = OLD.tenant_id
                        AND f.expires_at > clock_timestamp()))
    THEN
        RAISE EXCEPTION 'tenant % is moving to another shard',
            coalesce(NEW.tenant_id, OLD.tenant_id)
            USING ERRCODE = '{FENCE_SQLSTATE}',
                  HINT = 'refresh the tenant''s placement and retry the write';
    END IF;
    RETURN coalesce(NEW, OLD);
END
$$;
"""


# A fence table made before its lease column (expires_at) gets it.
_ADD_LEASE_SQL = """
ALTER TABLE shardsvc_fence
    ADD COLUMN IF NOT EXISTS expires_at timestamptz NOT NULL DEFAULT 'infinity'
"""
# pg_trigger.tgtype of the fence trigger: FOR EACH ROW (1) | INSERT (4) | DELETE (8) |
# UPDATE (16), and neither BEFORE (2) nor INSTEAD OF (64): AFTER.
_TRIGGER_TYPE = 1 | 4 | 8 | 16


def install(alias: str, tables: list[str]) -> None:
    """The fence table, function and one trigger per sharded table (idempotent).

    What is already in place is left alone: `ALTER TABLE` and `CREATE TRIGGER` lock their
    table even when they change nothing, and in the migration's transaction, on a shard taking
    writes, those locks deadlocked with the writes (a write locks its tables, then its fence
    trigger reads shardsvc_fence; the install locked shardsvc_fence, then the tables)."""
    quote = connections[alias].ops.quote_name
    with connections[alias].cursor() as cursor:
        cursor.execute(INSTALL_SQL)
        cursor.execute("SELECT 1 FROM pg_attribute WHERE attrelid = 'shardsvc_fence'::regclass "
                       "AND attname = 'expires_at' AND NOT attisdropped")
        if cursor.fetchone() is None:
            cursor.execute(_ADD_LEASE_SQL)
        cursor.execute(
            "SELECT c.relname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "WHERE t.tgname = 'shardsvc_fence' AND NOT t.tgisinternal AND t.tgtype = %s "
            "AND t.tgfoid = 'shardsvc_fence_check()'::regprocedure "
            "AND c.relnamespace = current_schema()::regnamespace",
            [_TRIGGER_TYPE],
        )
        in_place = {name for (name,) in cursor.fetchall()}
        for table in tables:
            if table in in_place:
                continue
            # AFTER, not BEFORE: the error aborts the statement all the same, and a BEFORE row
            # trigger makes every COPY into the table insert row by row (no multi-insert),
            # even where it does not fire, as in a move's copy (session_replication_role).
            cursor.execute(
                f"CREATE OR REPLACE TRIGGER shardsvc_fence AFTER INSERT OR UPDATE OR DELETE "
                f"ON {quote(table)} FOR EACH ROW EXECUTE FUNCTION shardsvc_fence_check()"
            )


def is_fence_error(exc: BaseException) -> bool:
    cause: BaseException | None = exc
    while cause is not None:
        if getattr(cause, "sqlstate", None) == FENCE_SQLSTATE:
            return True
        cause = cause.__cause__
    return False


class TenantStillFenced(DatabaseError):
    """The tenant stayed fenced longer than FENCE_RETRY_SECONDS: its move is stuck."""
