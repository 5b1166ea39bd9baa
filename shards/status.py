"""What ops need to see about the fleet, read directly from the servers (`shard_status`).

- every server of the topology: up or not, and for a replica its lag (seconds, from its own
  replay timestamp, and bytes behind its primary), checked over the direct DSNs now, not
  taken from any worker's health cache;
- per shard: open to new tenants or not, tenants (directory), rows and on-disk size of the
  sharded tables, and rows of tenants placed elsewhere (a move's copy or its uncleaned source);
- moves in progress and the last finished ones, the cluster lock's holder;
- leaked replication objects on every shard primary.

Leaks. A move's publication, subscription and slot are all named `shardsvc_move_<job id>`; any
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

import datetime as dt
import math
import re
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.lsn import current_lsn, parse_lsn
from shards.replication import PREFIX

SYNC_SLOT_RE = re.compile(r"^pg_(\d+)_sync_(\d+)_(\d+)$")
CONNECT_TIMEOUT = 3


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _connect(dsn: str, purpose: str) -> psycopg.Connection[Any]:
    return pg.connect(dsn, connect_timeout=CONNECT_TIMEOUT,
                      application_name=f"shardsvc status: {purpose}"[:63])


def _parallel(function: Any, items: Iterable[Any]) -> None:
    items = list(items)
    if not items:
        return
    with ThreadPoolExecutor(max_workers=min(len(items), 32)) as pool:
        list(pool.map(function, items))


# --- servers and replica lag -------------------------------------------------------------------


@dataclass
class ServerState:
    alias: str
    cluster: str
    role: str
    up: bool = False
    error: str = ""
    wal_lsn: int | None = None  # primary: pg_current_wal_lsn
    in_recovery: bool | None = None
    replay_lsn: int | None = None  # replica
    lag_seconds: float | None = None  # replica; math.inf when it cannot tell
    behind_bytes: int | None = None  # replica: primary's WAL position - replayed position

    def describe_lag(self) -> str:
        if self.role != "replica":
            return "-"
        if not self.up:
            return "unreachable"
        if self.in_recovery is False:
            return "not in recovery (promoted?)"
        if self.lag_seconds is None or math.isinf(self.lag_seconds):
            return "unknown (not streaming)"
        return f"{self.lag_seconds:.3f} s"


def check_servers() -> list[ServerState]:
    """Every server of the topology, checked directly and concurrently; primaries first so a
    replica's bytes behind compare with a primary position read just before."""
    from routers.replicas import CHECK_QUERY
    from shards.topology import get_shard_map

    shard_map = get_shard_map()
    states: list[ServerState] = []
    by_alias: dict[str, ServerState] = {}
    for cluster in shard_map.clusters:
        for server in cluster.servers:
            state = ServerState(server.alias, cluster.name, server.role)
            states.append(state)
            by_alias[server.alias] = state

    def primary(server: Any) -> None:
        state = by_alias[server.alias]
        try:
            with _connect(server.direct_dsn, "check") as conn:
                state.wal_lsn = current_lsn(conn)
                state.up = True
        except Exception as exc:
            state.error = _one_line(exc)

    def replica(server: Any) -> None:
        state = by_alias[server.alias]
        try:
            with _connect(server.direct_dsn, "check") as conn:
                in_recovery, replay, lag = pg.fetch_row(conn, CHECK_QUERY)
        except Exception as exc:
            state.error = _one_line(exc)
            return
        state.up = True
        state.in_recovery = bool(in_recovery)
        state.replay_lsn = parse_lsn(replay) if replay else None
        state.lag_seconds = max(0.0, float(lag)) if lag is not None else math.inf
        head = by_alias[shard_map.cluster_of(server.alias).primary.alias].wal_lsn
        if head is not None and state.replay_lsn is not None:
            state.behind_bytes = max(head - state.replay_lsn, 0)

    _parallel(primary, [c.primary for c in shard_map.clusters])
    _parallel(replica, [r for c in shard_map.clusters for r in c.replicas])
    return states


# --- shards: tenants, rows, size ---------------------------------------------------------------


@dataclass
class ShardSummary:
    name: str
    accepts_tenants: bool | None  # None: no registry row (not migrated yet)
    replicas: list[str]
    tenants: int = 0
    rows: int = 0  # rows of the tenants placed here
    stray_rows: int = 0  # rows here of tenants placed elsewhere
    size_bytes: int = 0
    error: str = ""
    rows_by_tenant: dict[int, int] = field(default_factory=dict)


def summarize_shards() -> list[ShardSummary]:
    from shards.models import Shard, Tenant
    from shards.moves import sharded_tables
    from shards.rebalance import measure_shard
    from shards.topology import get_shard_map

    shard_map = get_shard_map()
    registry = {s.name: s.accepts_tenants for s in Shard.objects.using(CONTROL_ALIAS).all()}
    placed: dict[str, set[int]] = {}
    for tenant_id, shard in Tenant.objects.using(CONTROL_ALIAS).values_list("id", "shard"):
        placed.setdefault(shard, set()).add(tenant_id)
    tables = sharded_tables()
    summaries = {
        c.name: ShardSummary(c.name, registry.get(c.name), [r.alias for r in c.replicas],
                             tenants=len(placed.get(c.name, ())))
        for c in shard_map.shards
    }

    def one(name: str) -> None:
        summary = summaries[name]
        dsn = shard_map.shard(name).primary.direct_dsn
        try:
            measured = measure_shard(dsn, name, tables)
            with _connect(dsn, "sizes") as conn:
                summary.size_bytes = int(pg.fetch_value(
                    conn,
                    "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) "
                    "FROM unnest(%s::text[]) t", [tables]))
        except Exception as exc:
            summary.error = _one_line(exc)
            return
        mine = placed.get(name, set())
        for tenant_id, (rows, _recent) in measured.by_tenant.items():
            if tenant_id in mine:
                summary.rows += rows
                summary.rows_by_tenant[tenant_id] = rows
            else:
                summary.stray_rows += rows

    _parallel(one, summaries)
    return list(summaries.values())


# --- replication objects and leaks -------------------------------------------------------------


@dataclass(frozen=True)
class Leak:
    shard: str
    kind: str  # publication | subscription | slot
    name: str
    detail: str = ""

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
    from shards.topology import get_shard_map

    shard_map = get_shard_map()
    results: dict[str, ReplicationObjects] = {}

    def one(name: str) -> None:
        try:
            with _connect(shard_map.shard(name).primary.direct_dsn, "leaks") as conn:
                results[name] = scan_replication(conn, name)
        except Exception as exc:
            results[name] = ReplicationObjects(name, error=_one_line(exc))

    _parallel(one, shard_map.shard_names)
    return {name: results[name] for name in shard_map.shard_names}


def active_move_names() -> set[str]:
    from shards.models import MoveJob

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
    from migrations_tools.lock import cluster_lock
    from shards.topology import get_shard_map

    shard_map = get_shard_map()
    with cluster_lock("shard_status --sweep", wait=lock_wait):
        report = check_leaks()
        for kind in ("subscription", "slot", "publication"):
            leaks = [leak for leak in report.leaks if leak.kind == kind]
            for leak in leaks:
                dsn = shard_map.shard(leak.shard).primary.direct_dsn
                try:
                    with _connect(dsn, "sweep") as conn:
                        _drop(conn, leak)
                    progress(f"dropped {leak.describe()}")
                except Exception as exc:
                    progress(f"could not drop {leak.describe()}: {_one_line(exc)}")
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


# --- moves and the lock ------------------------------------------------------------------------


def moves() -> tuple[list[Any], list[Any]]:
    """(unfinished moves, the last 10 finished ones)."""
    from shards.models import MoveJob

    jobs = MoveJob.objects.using(CONTROL_ALIAS).select_related("tenant")
    active = list(jobs.filter(state__in=MoveJob.ACTIVE_STATES).order_by("created_at"))
    recent = list(jobs.exclude(state__in=MoveJob.ACTIVE_STATES).order_by("-created_at")[:10])
    return active, recent


def ago(when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = max((dt.datetime.now(dt.UTC) - when).total_seconds(), 0.0)
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h ago"
    return when.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def progress_text(job: Any) -> str:
    if job.rows_total:
        share = min(job.rows_copied / job.rows_total, 1.0)
        return f"{job.rows_copied}/{job.rows_total} rows ({share:.0%})"
    return f"{job.rows_copied} rows"


def human_bytes(value: int | None) -> str:
    if value is None:
        return "-"
    if value < 1024:
        return f"{value} B"
    size, unit = value / 1024, "kB"
    for bigger in ("MB", "GB"):
        if size < 1024:
            break
        size, unit = size / 1024, bigger
    return f"{size:.1f} {unit}"
