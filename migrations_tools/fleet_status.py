"""What ops need to see about the fleet, read directly from the servers (`shard_status`).

- every server of the topology: up or not, and for a replica its lag (seconds, from its own
  replay timestamp, and bytes behind its primary), checked over the direct DSNs now, not
  taken from any worker's health cache;
- per shard: open to new tenants or not, tenants (directory), rows and on-disk size of the
  sharded tables, and rows of tenants placed elsewhere (a move's copy or its uncleaned source);
- moves in progress and the last finished ones, the cluster lock's holder;
- leaked replication objects on every shard primary (`migrations_tools.leaks`).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from migrations_tools import move_progress
from migrations_tools.fleet import connect, one_line, parallel
from migrations_tools.lock import LockHolder
from migrations_tools.rebalance import measure_shard
from migrations_tools.tenant_rows import sharded_tables
from routers.replicas import CHECK_QUERY
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.lsn import current_lsn, parse_lsn
from shards.models import MoveJob, Shard, Tenant
from shards.topology import get_shard_map

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


def check_servers(clusters: Collection[str] | None = None) -> list[ServerState]:
    """Every server of the topology (of `clusters` only, if given), checked directly and
    concurrently; primaries first so a replica's bytes behind compare with a primary position
    read just before."""
    shard_map = get_shard_map()
    checked = [c for c in shard_map.clusters if clusters is None or c.name in clusters]
    states: list[ServerState] = []
    by_alias: dict[str, ServerState] = {}
    for cluster in checked:
        for server in cluster.servers:
            state = ServerState(server.alias, cluster.name, server.role)
            states.append(state)
            by_alias[server.alias] = state

    def primary(server: Any) -> None:
        state = by_alias[server.alias]
        try:
            with connect(server.direct_dsn, "check") as conn:
                state.wal_lsn = current_lsn(conn)
                state.up = True
        except Exception as exc:
            state.error = one_line(exc)

    def replica(server: Any) -> None:
        state = by_alias[server.alias]
        try:
            with connect(server.direct_dsn, "check") as conn:
                in_recovery, replay, lag = pg.fetch_row(conn, CHECK_QUERY)
        except Exception as exc:
            state.error = one_line(exc)
            return
        state.up = True
        state.in_recovery = bool(in_recovery)
        state.replay_lsn = parse_lsn(replay) if replay else None
        state.lag_seconds = max(0.0, float(lag)) if lag is not None else math.inf
        head = by_alias[shard_map.cluster_of(server.alias).primary.alias].wal_lsn
        if head is not None and state.replay_lsn is not None:
            state.behind_bytes = max(head - state.replay_lsn, 0)

    parallel(primary, [c.primary for c in checked])
    parallel(replica, [r for c in checked for r in c.replicas])
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
    bytes_by_tenant: dict[int, int] = field(default_factory=dict)  # row data, see rebalance


def summarize_shards() -> list[ShardSummary]:
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
            with connect(dsn, "sizes") as conn:
                summary.size_bytes = int(pg.fetch_value(
                    conn,
                    "SELECT coalesce(sum(pg_total_relation_size(to_regclass(t))), 0) "
                    "FROM unnest(%s::text[]) t", [tables]))
        except Exception as exc:
            summary.error = one_line(exc)
            return
        mine = placed.get(name, set())
        for tenant_id, (rows, _recent) in measured.by_tenant.items():
            if tenant_id in mine:
                summary.rows += rows
                summary.rows_by_tenant[tenant_id] = rows
                summary.bytes_by_tenant[tenant_id] = measured.bytes_by_tenant.get(tenant_id, 0)
            else:
                summary.stray_rows += rows

    parallel(one, summaries)
    return list(summaries.values())


# --- moves and the lock ------------------------------------------------------------------------


def moves(only: set[int] | None = None) -> tuple[list[Any], list[Any]]:
    """(unfinished moves, the last 10 finished ones), of the tenants `only` if given."""
    jobs = MoveJob.objects.using(CONTROL_ALIAS).select_related("tenant")
    if only is not None:
        jobs = jobs.filter(tenant_id__in=only)
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
    return move_progress.progress_text(job.rows_copied, job.rows_total)


def mover_running(job: Any, holder: LockHolder | None) -> bool:
    """Whether a live command drives this move: every mover (move_tenant, rebalance, the
    admin's background move) holds the cluster lock named for the tenant, and a session lock
    dies with its process, so no holder by that name means nobody runs it."""
    if holder is None or job.state == MoveJob.State.UNVERIFIED:
        return False  # an unverified move waits for an operator, never for a command
    mine = f"move_tenant {job.tenant.slug}"
    return holder.purpose in (mine, f"move_tenant --abort {job.tenant.slug}") or \
        holder.purpose.startswith(mine + " ")


def stuck_note(job: Any) -> str:
    """What an operator runs for a move nobody drives."""
    slug = job.tenant.slug
    if job.state == MoveJob.State.UNVERIFIED:
        return (f"UNVERIFIED: source rows kept on {job.source}; inspect them, then finish "
                f"with `move_tenant {slug} {job.target} --accept-unverified`")
    if job.state in (MoveJob.State.FLIPPED, MoveJob.State.CLEANUP):
        return f"NOT RUNNING: resume with `move_tenant {slug} {job.target}` (already flipped)"
    return (f"NOT RUNNING: resume with `move_tenant {slug} {job.target}` "
            f"or roll back with `move_tenant {slug} --abort`")


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
