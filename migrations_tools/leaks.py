"""Replication objects that moves can leave behind on shard primaries, found and swept.

A move's publication, subscription and slot are all named `shardsvc_move_<job id>`; any
of them whose job is not unfinished is a leak. A subscription's initial copy also makes table
sync slots on the source, `pg_<subscription oid>_sync_<relid>_<subscriber system id>`: such a
slot is a leak unless a subscriber (found by its system id among the shard primaries; clones of
one initdb share it) still has that subscription and it belongs to an unfinished move. A leaked
slot holds WAL on its server forever (up to max_slot_wal_keep_size). Unfinished jobs are read
before and after the scan, so a move that starts during the scan is never reported (a job row
exists before its objects are made); `sweep()` runs under the cluster lock, so no move runs
while it drops. Objects of an unfinished move whose command died are not leaks: resume or
abort that move.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from migrations_tools.fleet import connect, one_line, parallel
from migrations_tools.lock import cluster_lock
from migrations_tools.replication import PREFIX
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob
from shards.topology import get_shard_map

SYNC_SLOT_RE = re.compile(r"^pg_(\d+)_sync_(\d+)_(\d+)$")


@dataclass(frozen=True)
class Leak:
    shard: str
    kind: str  # publication | subscription | slot
    name: str
    detail: str = ""
    member: str = ""  # a standby of the shard holding it (else the shard's primary)

    def describe(self) -> str:
        return f"{self.shard}: {self.kind} {self.name}" + (f" ({self.detail})" if self.detail
                                                           else "")


@dataclass
class ReplicationObjects:
    """The replication objects on one shard primary that moves can leave behind."""

    shard: str
    system_id: int = 0
    publications: list[str] = field(default_factory=list)
    subscriptions: dict[str, int] = field(default_factory=dict)  # name -> oid (all of them)
    slots: list[tuple[str, int | None]] = field(default_factory=list)  # (name, active pid)
    # (member alias, slot name): a move's slots on the shard's standbys. A leader that failed
    # over rejoins as a standby with its logical slots (pg_rewind keeps pg_replslot); on
    # PostgreSQL 15 a slot on a standby can never be used and holds WAL there.
    standby_slots: list[tuple[str, str]] = field(default_factory=list)
    error: str = ""


def scan_replication(conn: psycopg.Connection[Any], shard: str) -> ReplicationObjects:
    like = PREFIX.replace("_", r"\_") + "%"
    found = ReplicationObjects(shard)
    found.system_id = int(pg.fetch_value(
        conn, "SELECT system_identifier FROM pg_control_system()"))
    found.publications = [r[0] for r in conn.execute(
        "SELECT pubname FROM pg_publication WHERE pubname LIKE %s ORDER BY 1", [like])]
    found.subscriptions = {r[1]: int(r[0]) for r in conn.execute(
        "SELECT oid, subname FROM pg_subscription WHERE subdbid = "
        "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY 2")}
    found.slots = [(r[0], r[1]) for r in conn.execute(
        "SELECT slot_name, active_pid FROM pg_replication_slots "
        "WHERE slot_name LIKE %s OR slot_name ~ '^pg_[0-9]+_sync_' ORDER BY 1", [like])]
    return found


def scan_all() -> dict[str, ReplicationObjects]:
    shard_map = get_shard_map()
    results: dict[str, ReplicationObjects] = {}

    def one(name: str) -> None:
        try:
            with connect(shard_map.shard(name).primary.direct_dsn, "leaks") as conn:
                results[name] = scan_replication(conn, name)
        except Exception as exc:
            results[name] = ReplicationObjects(name, error=one_line(exc))
            return
        like = PREFIX.replace("_", r"\_") + "%"
        for member in shard_map.shard(name).replicas:
            try:  # a standby that is down is not checked: its primary's scan is what counts
                with connect(member.direct_dsn, "leaks") as conn:
                    results[name].standby_slots += [(member.alias, r[0]) for r in conn.execute(
                        "SELECT slot_name FROM pg_replication_slots WHERE slot_name LIKE %s "
                        "AND pg_is_in_recovery()", [like])]
            except Exception:
                continue

    parallel(one, shard_map.shard_names)
    return {name: results[name] for name in shard_map.shard_names}


def active_move_names() -> set[str]:
    return {f"{PREFIX}{pk}" for pk in MoveJob.objects.using(CONTROL_ALIAS).filter(
        state__in=MoveJob.ACTIVE_STATES).values_list("pk", flat=True)}


def find_leaks(objects: dict[str, ReplicationObjects], active: set[str]) -> list[Leak]:
    """Pure: the leaks among the scanned objects, given the names of unfinished moves."""
    # Keyed by (system id, oid) but possibly ambiguous: the local topology clones every
    # primary from one initdb, so they all share one system id, and their oid counters start
    # alike. A sync slot is kept if ANY subscription it may belong to is an unfinished move.
    subscription_of: dict[tuple[int, int], set[str]] = {}
    for o in objects.values():
        if not o.error:
            for name, oid in o.subscriptions.items():
                subscription_of.setdefault((o.system_id, oid), set()).add(name)
    known_systems = {o.system_id for o in objects.values() if not o.error}
    complete = all(not o.error for o in objects.values())
    leaks: list[Leak] = []
    for shard, found in objects.items():
        if found.error:
            continue
        leaks += [Leak(shard, "publication", name) for name in found.publications
                  if name not in active]
        leaks += [Leak(shard, "slot", name, f"on standby {member}, left by a failover",
                       member=member) for member, name in found.standby_slots]
        leaks += [Leak(shard, "subscription", name) for name in found.subscriptions
                  if name.startswith(PREFIX) and name not in active]
        for name, _pid in found.slots:
            if name.startswith(PREFIX):
                if name not in active:
                    leaks.append(Leak(shard, "slot", name))
                continue
            match = SYNC_SLOT_RE.match(name)
            if match is None:
                continue
            oid, system = int(match[1]), int(match[3])
            owners = subscription_of.get((system, oid), set())
            if not owners:
                if system in known_systems or complete:
                    leaks.append(Leak(shard, "slot", name,
                                      f"table-sync slot of subscription {oid}, which is gone"))
            elif not owners & active:
                leaks.append(Leak(shard, "slot", name, "table-sync slot of subscription "
                                  f"{', '.join(sorted(owners))}, no unfinished move"))
    return leaks


@dataclass
class LeakReport:
    leaks: list[Leak]
    unchecked: dict[str, str]  # shard -> why it could not be checked
    active: set[str]


def check_leaks() -> LeakReport:
    before = active_move_names()
    objects = scan_all()
    active = before | active_move_names()
    return LeakReport(find_leaks(objects, active),
                      {s: o.error for s, o in objects.items() if o.error}, active)


def sweep(*, progress: Any = print, lock_wait: float = 0.0) -> LeakReport:
    """Drop every leaked object, under the cluster lock (no move or migration runs meanwhile):
    subscriptions first (normally; if that fails, detached from their slot first), then slots
    (their walsender ended first), then publications. Returns what is left."""
    shard_map = get_shard_map()
    with cluster_lock("shard_status --sweep", wait=lock_wait):
        report = check_leaks()
        for kind in ("subscription", "slot", "publication"):
            leaks = [leak for leak in report.leaks if leak.kind == kind]
            for leak in leaks:
                cluster = shard_map.shard(leak.shard)
                dsn = next((m.direct_dsn for m in cluster.replicas if m.alias == leak.member),
                           cluster.primary.direct_dsn)
                try:
                    with connect(dsn, "sweep") as conn:
                        _drop(conn, leak)
                    progress(f"dropped {leak.describe()}")
                except Exception as exc:
                    progress(f"could not drop {leak.describe()}: {one_line(exc)}")
            if kind == "subscription" and leaks:
                # Dropping a subscription can leave (or drop) its slots: look again.
                report = check_leaks()
        return check_leaks()


def _drop(conn: psycopg.Connection[Any], leak: Leak) -> None:
    ident = sql.Identifier(leak.name)
    if leak.kind == "publication":
        conn.execute(sql.SQL("DROP PUBLICATION IF EXISTS {}").format(ident))
    elif leak.kind == "subscription":
        try:
            # Drops its slot on the publisher too, when that is reachable and has it.
            conn.execute(sql.SQL("DROP SUBSCRIPTION IF EXISTS {}").format(ident))
        except psycopg.Error:
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
            conn.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
            conn.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    else:
        for _attempt in range(50):
            row = conn.execute("SELECT active_pid FROM pg_replication_slots "
                               "WHERE slot_name = %s", [leak.name]).fetchone()
            if row is None:
                return
            if row[0] is None:
                try:
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [leak.name])
                    return
                except psycopg.errors.ObjectInUse:
                    pass  # a walsender took it again between the two statements
            else:
                conn.execute("SELECT pg_terminate_backend(%s)", [row[0]])
            time.sleep(0.1)
        raise RuntimeError(f"slot {leak.name} stays in use")
