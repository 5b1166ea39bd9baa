"""Schema drift: a fingerprint of each server's introspected schema, compared across the fleet.

A fingerprint is a set of items, one per schema object, each a key ("column
comments_thread.title") and a canonical description ("character varying(300) NOT NULL DEFAULT
''::character varying"), read from pg_catalog: tables (kind, replica identity), columns (type,
nullability, default, identity, generated), indexes (definition, validity), constraints
(definition, validated), triggers (definition, enabled), functions (body hash), extensions, and
the applied migrations. Object ids, data, statistics and ownership are left out: they differ
between healthy shards. Replicas are read over their direct DSN, after waiting (bounded) for them
to replay what their primary had written when the check started.

Shards are compared with the shard fingerprint most primaries share (ties: the first shard in
the topology); control's replicas with the control primary.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg

from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.lsn import current_lsn, format_lsn
from shards.topology import Server, get_shard_map

_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') "
    "AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'"
)
_RELKINDS = {"r": "table", "p": "partitioned table", "v": "view", "m": "materialized view",
             "f": "foreign table", "S": "sequence"}
_REPLICA_IDENTITY = {"d": "default", "n": "nothing", "f": "full", "i": "index"}

QUERIES: dict[str, str] = {
    "table": f"""
        SELECT n.nspname, c.relname, c.relkind, c.relreplident, c.relpersistence
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S') AND {_SCHEMAS}""",
    "column": f"""
        SELECT n.nspname, c.relname, a.attname, format_type(a.atttypid, a.atttypmod),
               a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attidentity, a.attgenerated,
               CASE WHEN a.attcollation <> t.typcollation THEN co.collname END
        FROM pg_attribute a
        JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        JOIN pg_type t ON t.oid = a.atttypid
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        LEFT JOIN pg_collation co ON co.oid = a.attcollation
        WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
          AND {_SCHEMAS}""",
    "index": f"""
        SELECT n.nspname, ic.relname, pg_get_indexdef(i.indexrelid), i.indisvalid,
               i.indisreplident
        FROM pg_index i
        JOIN pg_class ic ON ic.oid = i.indexrelid
        JOIN pg_namespace n ON n.oid = ic.relnamespace
        WHERE {_SCHEMAS}""",
    "constraint": f"""
        SELECT n.nspname, c.relname, con.conname, pg_get_constraintdef(con.oid),
               con.convalidated, con.condeferrable, con.condeferred
        FROM pg_constraint con
        JOIN pg_class c ON c.oid = con.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE {_SCHEMAS}""",
    "trigger": f"""
        SELECT n.nspname, c.relname, t.tgname, pg_get_triggerdef(t.oid), t.tgenabled
        FROM pg_trigger t
        JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE NOT t.tgisinternal AND {_SCHEMAS}""",
    "function": f"""
        SELECT n.nspname, p.proname, pg_get_function_identity_arguments(p.oid),
               md5(pg_get_functiondef(p.oid))
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE p.prokind IN ('f', 'p') AND {_SCHEMAS}
          AND NOT EXISTS (SELECT 1 FROM pg_depend dep
                          WHERE dep.objid = p.oid AND dep.deptype = 'e')""",
    "extension": "SELECT extname, extversion FROM pg_extension",
}


def _qualified(schema: str, name: str) -> str:
    return name if schema == "public" else f"{schema}.{name}"


def _items(cursor: Any) -> dict[str, str]:
    items: dict[str, str] = {}
    cursor.execute(QUERIES["table"])
    for schema, name, kind, identity, persistence in cursor.fetchall():
        detail = _RELKINDS.get(kind, kind)
        if kind in ("r", "p"):
            detail += f", replica identity {_REPLICA_IDENTITY.get(identity, identity)}"
        if persistence == "u":
            detail += ", unlogged"
        items[f"{_RELKINDS.get(kind, 'relation')} {_qualified(schema, name)}"] = detail
    cursor.execute(QUERIES["column"])
    for schema, table, name, type_, notnull, default, identity, generated, coll in (
        cursor.fetchall()
    ):
        detail = type_ + (" NOT NULL" if notnull else " NULL")
        if default is not None:
            detail += f" {'GENERATED AS' if generated else 'DEFAULT'} {default}"
        if identity:
            detail += f" IDENTITY ({'always' if identity == 'a' else 'by default'})"
        if coll:
            detail += f" COLLATE {coll}"
        items[f"column {_qualified(schema, table)}.{name}"] = detail
    cursor.execute(QUERIES["index"])
    for schema, name, definition, valid, replident in cursor.fetchall():
        detail = definition + ("" if valid else " [INVALID]") + (
            " [replica identity]" if replident else ""
        )
        items[f"index {_qualified(schema, name)}"] = detail
    cursor.execute(QUERIES["constraint"])
    for schema, table, name, definition, validated, deferrable, deferred in cursor.fetchall():
        detail = definition + ("" if validated else " NOT VALID")
        if deferrable:
            detail += " DEFERRABLE" + (" INITIALLY DEFERRED" if deferred else "")
        items[f"constraint {_qualified(schema, table)}.{name}"] = detail
    cursor.execute(QUERIES["trigger"])
    for schema, table, name, definition, enabled in cursor.fetchall():
        state = {"O": "", "D": " [DISABLED]", "R": " [REPLICA]", "A": " [ALWAYS]"}
        items[f"trigger {_qualified(schema, table)}.{name}"] = definition + state.get(enabled, "")
    cursor.execute(QUERIES["function"])
    for schema, name, args, digest in cursor.fetchall():
        items[f"function {_qualified(schema, name)}({args})"] = f"body md5 {digest}"
    cursor.execute(QUERIES["extension"])
    for name, version in cursor.fetchall():
        items[f"extension {name}"] = f"version {version}"
    cursor.execute("SELECT to_regclass('django_migrations') IS NOT NULL")
    if (cursor.fetchone() or [False])[0]:
        cursor.execute("SELECT app, name FROM django_migrations")
        for app, name in cursor.fetchall():
            items[f"migration {app}.{name}"] = "applied"
    return items


@dataclass
class Fingerprint:
    alias: str
    role: str
    cluster: str
    items: dict[str, str] = field(default_factory=dict)
    error: str | None = None
    note: str = ""  # e.g. a replica that had not caught up

    @property
    def digest(self) -> str:
        if self.error is not None:
            return "-"
        text = "\n".join(f"{k}\t{v}" for k, v in sorted(self.items.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def fingerprint(server: Server, *, cluster: str, primary_lsn: int | None = None,
                replica_wait: float = 10.0) -> Fingerprint:
    """Read one server's schema; a replica first waits (bounded) to replay `primary_lsn`."""
    result = Fingerprint(alias=server.alias, role=server.role, cluster=cluster)
    try:
        with pg.connect(server.direct_dsn, application_name="shardsvc check_shard_schema") as conn:
            if server.role == "replica" and primary_lsn is not None:
                result.note = _wait_for_replay(conn, primary_lsn, replica_wait)
            # One snapshot for all queries: the schema cannot change half way through.
            with conn.transaction(), conn.cursor() as cursor:
                cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                result.items = _items(cursor)
    except psycopg.Error as exc:
        result.error = str(exc).strip().splitlines()[0]
    return result


def _wait_for_replay(conn: psycopg.Connection[Any], lsn: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while True:
        row = conn.execute("SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn >= %s",
                           [lsn]).fetchone()
        replayed = row is not None and row[0]
        if replayed:
            return ""
        if time.monotonic() >= deadline:
            return (f"had not replayed its primary's WAL {format_lsn(lsn)} after {timeout:g}s: "
                    "may be stale")
        time.sleep(0.1)


def primary_position(server: Server) -> int | None:
    try:
        with pg.connect(server.direct_dsn) as conn:
            return current_lsn(conn)
    except psycopg.Error:
        return None


@dataclass(frozen=True)
class Difference:
    sign: str  # "+" only here, "-" missing here, "~" differs
    key: str
    here: str | None
    there: str | None

    def describe(self, reference: str) -> str:
        if self.sign == "+":
            return f"+ {self.key}: {self.here} (not on {reference})"
        if self.sign == "-":
            return f"- {self.key}: missing (on {reference}: {self.there})"
        return f"~ {self.key}: {self.here} (on {reference}: {self.there})"


def differences(here: Fingerprint, reference: Fingerprint) -> list[Difference]:
    out = []
    for key in sorted(set(here.items) | set(reference.items)):
        mine, theirs = here.items.get(key), reference.items.get(key)
        if mine == theirs:
            continue
        sign = "+" if theirs is None else "-" if mine is None else "~"
        out.append(Difference(sign, key, mine, theirs))
    return out


@dataclass
class GroupReport:
    """One comparison group: the shards, or the control cluster."""

    name: str
    reference: Fingerprint | None
    reason: str
    members: list[Fingerprint]
    drift: dict[str, list[Difference]] = field(default_factory=dict)  # alias -> differences


@dataclass
class DriftReport:
    groups: list[GroupReport]

    @property
    def drifted(self) -> list[str]:
        return [alias for g in self.groups for alias in g.drift]

    @property
    def unchecked(self) -> list[Fingerprint]:
        return [m for g in self.groups for m in g.members if m.error is not None]

    @property
    def clean(self) -> bool:
        return not self.drifted and not self.unchecked


def _choose_reference(members: Sequence[Fingerprint]) -> tuple[Fingerprint | None, str]:
    primaries = [m for m in members if m.role == "primary" and m.error is None]
    if not primaries:
        return None, "no primary could be read"
    counts = Counter(m.digest for m in primaries)
    best = max(counts.values())
    # Ties go to the first shard in topology order: the most deliberate choice available.
    reference = next(m for m in primaries if counts[m.digest] == best)
    if len(primaries) == 1:
        return reference, "the primary"
    return reference, f"{best} of {len(primaries)} primaries share it"


def compare(fingerprints: Sequence[Fingerprint]) -> DriftReport:
    groups: list[GroupReport] = []
    for name, cluster_filter in (("control", True), ("shards", False)):
        members = [f for f in fingerprints if (f.cluster == CONTROL_ALIAS) == cluster_filter]
        if not members:
            continue
        reference, reason = _choose_reference(members)
        group = GroupReport(name=name, reference=reference, reason=reason, members=members)
        if reference is not None:
            for member in members:
                if member.error is None and member.digest != reference.digest:
                    group.drift[member.alias] = differences(member, reference)
        groups.append(group)
    return DriftReport(groups=groups)


def check_fleet(*, shards: Sequence[str] | None = None, replicas: bool = True,
                control: bool = True, replica_wait: float = 10.0, jobs: int = 8) -> DriftReport:
    """Fingerprint the selected servers in parallel and compare them."""
    shard_map = get_shard_map()
    clusters = [c for c in shard_map.shards if not shards or c.name in shards]
    if control:
        clusters.insert(0, shard_map.control)
    servers: list[tuple[Server, str]] = []
    for cluster in clusters:
        servers += [(s, cluster.name) for s in cluster.servers if replicas or s.role == "primary"]
    # Replicas are compared after replaying what their primary had when the check started.
    lsns = {c.name: primary_position(c.primary) for c in clusters} if replicas else {}
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="schema") as pool:
        prints = list(pool.map(
            lambda pair: fingerprint(pair[0], cluster=pair[1], primary_lsn=lsns.get(pair[1]),
                                     replica_wait=replica_wait),
            servers,
        ))
    return compare(prints)
