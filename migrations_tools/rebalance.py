"""Rebalancing: measure what each tenant weighs, plan moves that even the shards out.

What is measured, on every shard primary over its direct DSN (one thread per shard):

- **size**: each tenant's rows, `SELECT tenant_id, count(*) ... GROUP BY tenant_id` on every
  sharded table. Rows are what a move copies, what the shard stores and caches, and what its
  queries scan, and they can be attributed to one tenant exactly;
- **recent load**: each tenant's rows *inserted* within a recent window (default 1 h), counted
  from the ids: global ids start with their creation time in milliseconds, so "inserted since T"
  is `id >= (T - epoch) << 23`, answered from the (tenant_id, id) index. A shard's recent load
  is the sum over its tenants.

Why not `pg_stat_user_tables` (n_tup_ins + upd + del deltas): those counters are per table,
not per tenant, so they cannot say how much load a move would take away from one shard and add
to another; and the moves themselves (copy on the target, batched deletes on the source) inflate
them. The id-based count is per tenant and moves with the tenant (ids survive a move). It sees
inserts only, not updates or deletes: in this service (comments, votes) inserts dominate.

The planner is a pure function (`plan_rebalance`) so it can be tested without a database.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from psycopg import sql

from migrations_tools.tenant_rows import sharded_tables
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.global_ids import first_id_at
from shards.models import MoveJob, Shard, Tenant
from shards.topology import get_shard_map

WEIGHTS = ("rows", "recent")


@dataclass(frozen=True)
class TenantLoad:
    """One tenant as the planner sees it."""

    tenant_id: int
    slug: str
    shard: str
    rows: int
    recent: int = 0  # rows inserted within the recent window
    movable: bool = True  # False while the tenant has an unfinished move

    def weight(self, by: str) -> int:
        return self.recent if by == "recent" else self.rows


@dataclass(frozen=True)
class ShardInfo:
    name: str
    accepts_tenants: bool = True
    note: str = ""


@dataclass(frozen=True)
class PlannedMove:
    tenant_id: int
    slug: str
    source: str
    target: str
    rows: int
    recent: int
    weight: int


@dataclass
class ShardLoad:
    tenants: int = 0
    rows: int = 0
    recent: int = 0

    def weight(self, by: str) -> int:
        return self.recent if by == "recent" else self.rows


@dataclass
class Plan:
    by: str
    tolerance: float
    shards: list[ShardInfo]
    moves: list[PlannedMove]
    before: dict[str, ShardLoad]
    after: dict[str, ShardLoad]
    mean: float  # the target level (see target_level): the mean, unless closed shards are light
    outcome: str  # why planning stopped

    def balanced(self, loads: Mapping[str, ShardLoad]) -> bool:
        return within_tolerance({s: load.weight(self.by) for s, load in loads.items()},
                                [s.name for s in self.shards if s.accepts_tenants],
                                self.mean, self.tolerance)

    def spread(self, loads: Mapping[str, ShardLoad]) -> int:
        """Most loaded shard minus least loaded shard open to tenants."""
        values = [load.weight(self.by) for load in loads.values()]
        lows = [loads[s.name].weight(self.by) for s in self.shards if s.accepts_tenants]
        return max(values) - min(lows) if values and lows else 0


def within_tolerance(weights: Mapping[str, int], open_shards: Iterable[str], mean: float,
                     tolerance: float) -> bool:
    """No shard above mean * (1 + tolerance) and no shard open to tenants below
    mean * (1 - tolerance) (`mean`: the target level). A closed shard below it cannot be
    filled: ignored."""
    if not weights or mean <= 0:
        return True
    lows = [weights[s] for s in open_shards if s in weights]
    high_ok = max(weights.values()) <= mean * (1 + tolerance)
    low_ok = not lows or min(lows) >= mean * (1 - tolerance)
    return high_ok and low_ok


def target_level(weights: Mapping[str, int], open_shards: Iterable[str]) -> float:
    """The load every shard should end at: the mean, except that a shard closed to tenants
    below it cannot be filled, so it keeps its load and the others share the rest (water
    filling). A closed shard above the level may still shed tenants."""
    open_set = set(open_shards)
    total = sum(weights.values())
    fixed: set[str] = set()
    while True:
        free = [s for s in weights if s not in fixed]
        if not free:
            return 0.0
        level = (total - sum(weights[s] for s in fixed)) / len(free)
        newly = {s for s in free if s not in open_set and weights[s] < level}
        if not newly:
            return level
        fixed |= newly


def _loads(tenants: Iterable[TenantLoad], shard_names: Iterable[str]) -> dict[str, ShardLoad]:
    loads = {name: ShardLoad() for name in shard_names}
    for t in tenants:
        load = loads.setdefault(t.shard, ShardLoad())
        load.tenants += 1
        load.rows += t.rows
        load.recent += t.recent
    return loads


def plan_rebalance(tenants: Iterable[TenantLoad], shards: Iterable[ShardInfo], *,
                   tolerance: float = 0.1, max_moves: int | None = None,
                   by: str = "rows") -> Plan:
    """Greedy: take the most loaded shard and the least loaded shard open to tenants, and move
    the source's largest tenant that does not overshoot what the pair needs (the smaller of
    the source's excess over the target level and the target's shortfall), or if none, the
    smallest that overshoots, among those lighter than the pair's difference (a move as large
    as the difference would not reduce the spread). Repeat until every shard is within
    `tolerance` of the target level, no move helps, or `max_moves`. When the most loaded shard
    has no tenant that fits, the next pairs (above the level -> below it) are tried. Every move
    strictly lowers the sum of squared deviations, so planning ends; a tenant is moved at most
    once per plan."""
    if by not in WEIGHTS:
        raise ValueError(f"unknown weight {by!r}: use one of {', '.join(WEIGHTS)}")
    if not 0 <= tolerance < 1:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance}")
    if max_moves is not None and max_moves < 0:
        raise ValueError("max_moves must be 0 or more")
    tenants = list(tenants)
    shard_list = list(shards)
    names = [s.name for s in shard_list]
    unknown = sorted({t.shard for t in tenants} - set(names))
    if unknown:
        raise ValueError(f"tenants placed on shards outside the topology: {', '.join(unknown)}")
    open_names = [s.name for s in shard_list if s.accepts_tenants]
    before = _loads(tenants, names)
    total = sum(t.weight(by) for t in tenants)
    mean = target_level({name: before[name].weight(by) for name in names}, open_names)

    placement = {t.tenant_id: t.shard for t in tenants}
    weights = {name: before[name].weight(by) for name in names}
    order = {name: i for i, name in enumerate(names)}  # ties: topology order
    moved: set[int] = set()
    moves: list[PlannedMove] = []
    outcome = ""
    while True:
        if within_tolerance(weights, open_names, mean, tolerance):
            outcome = ("nothing to balance (no rows)" if not total
                       else "within tolerance" if moves else "already within tolerance")
            break
        if max_moves is not None and len(moves) >= max_moves:
            outcome = f"stopped at --max-moves {max_moves}"
            break
        choice = None
        sources = sorted(names, key=lambda s: (-weights[s], order[s]))
        targets = sorted(open_names, key=lambda s: (weights[s], order[s]))
        for source in sources:
            for target in targets:
                diff = weights[source] - weights[target]
                want = min(weights[source] - mean, mean - weights[target])
                if diff <= 0 or want <= 0:
                    break  # targets are sorted: no lighter one follows
                fits = [t for t in tenants
                        if placement[t.tenant_id] == source and t.movable
                        and t.tenant_id not in moved and 0 < t.weight(by) < diff]
                if fits:
                    under = [t for t in fits if t.weight(by) <= want]
                    if under:  # the largest that does not overshoot the need
                        best = max(under, key=lambda t: (t.weight(by), -t.tenant_id))
                    else:  # else the smallest overshoot
                        best = min(fits, key=lambda t: (t.weight(by), t.tenant_id))
                    choice = (best, source, target)
                    break
            if choice:
                break
        if choice is None:
            outcome = ("no move reduces the spread further (the tenants left are too large "
                       "for it, or moving)")
            break
        tenant, source, target = choice
        w = tenant.weight(by)
        weights[source] -= w
        weights[target] += w
        placement[tenant.tenant_id] = target
        moved.add(tenant.tenant_id)
        moves.append(PlannedMove(tenant.tenant_id, tenant.slug, source, target,
                                 tenant.rows, tenant.recent, w))
    after_tenants = [TenantLoad(t.tenant_id, t.slug, placement[t.tenant_id], t.rows, t.recent,
                                t.movable) for t in tenants]
    return Plan(by=by, tolerance=tolerance, shards=shard_list, moves=moves, before=before,
                after=_loads(after_tenants, names), mean=mean, outcome=outcome)


def format_plan(plan: Plan) -> list[str]:
    """The moves and the expected per-shard result, as printable lines."""
    lines: list[str] = []
    if plan.moves:
        lines.append(f"{len(plan.moves)} move(s), run one at a time in this order:")
        width = max(len(m.slug) for m in plan.moves)
        for i, m in enumerate(plan.moves, 1):
            lines.append(f"  {i:>3}. {m.slug:<{width}}  {m.source} -> {m.target}  "
                         f"{m.rows} rows, {m.recent} recent inserts")
    else:
        lines.append("no moves")
    lines.append(f"({plan.outcome}; balancing {plan.by}: target {plan.mean:.0f} per shard, "
                 f"tolerance {plan.tolerance:.0%})")
    lines.append("")
    return lines + format_table(plan, "expected result:")


def format_table(plan: Plan, title: str) -> list[str]:
    """Per shard: tenants, rows and recent inserts before -> after the plan."""
    lines = [title]
    header = (f"  {'SHARD':<12} {'OPEN':<5} {'TENANTS':>12} {'ROWS':>21} {'RECENT':>17} "
              f"{'VS TARGET':>9}")
    lines.append(header)
    for shard in plan.shards:
        b, a = plan.before[shard.name], plan.after[shard.name]
        deviation = (a.weight(plan.by) / plan.mean - 1) if plan.mean else 0.0
        lines.append(
            f"  {shard.name:<12} {'yes' if shard.accepts_tenants else 'no':<5} "
            f"{_arrow(b.tenants, a.tenants):>12} {_arrow(b.rows, a.rows):>21} "
            f"{_arrow(b.recent, a.recent):>17} {deviation:>+9.0%}"
            + (f"  {shard.note}" if shard.note else "")
        )
    lines.append(f"  spread ({plan.by}): {plan.spread(plan.before)} -> {plan.spread(plan.after)}"
                 f"; balanced: {'yes' if plan.balanced(plan.after) else 'no'}")
    return lines


def _arrow(before: int, after: int) -> str:
    return str(before) if before == after else f"{before} -> {after}"


# --- measuring ---------------------------------------------------------------------------------


@dataclass
class ShardMeasurement:
    """Rows per tenant on one shard primary: {tenant_id: [rows, recent]}."""

    shard: str
    by_tenant: dict[int, list[int]] = field(default_factory=dict)
    # The tenant's row data in bytes (pg_column_size of each row, TOAST included, indexes
    # and page overhead not): what its rows weigh, which the table sizes cannot split.
    bytes_by_tenant: dict[int, int] = field(default_factory=dict)
    tables: dict[str, int] = field(default_factory=dict)  # table -> rows (all tenants)


def recent_id_threshold(recent_seconds: float, *, now_ms: int | None = None) -> int:
    """The smallest global id made within the last `recent_seconds`."""
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    return first_id_at(now_ms - int(recent_seconds * 1000))


def measure_shard(dsn: str, shard: str, tables: list[str], *,
                  recent_seconds: float = 3600.0) -> ShardMeasurement:
    threshold = recent_id_threshold(recent_seconds)
    result = ShardMeasurement(shard)
    with pg.connect(dsn, application_name="shardsvc rebalance measure") as conn:
        for table in tables:
            if pg.fetch_value(conn, "SELECT to_regclass(%s)", [table]) is None:
                result.tables[table] = 0  # not migrated yet: holds nothing
                continue
            rows = conn.execute(
                sql.SQL("SELECT tenant_id, count(*), count(*) FILTER (WHERE id >= %s), "
                        "sum(pg_column_size(t.*)) FROM {} t GROUP BY tenant_id").format(
                    sql.Identifier(table)),
                [threshold],
            ).fetchall()
            result.tables[table] = sum(int(r[1]) for r in rows)
            for tenant_id, count, recent, size in rows:
                slot = result.by_tenant.setdefault(int(tenant_id), [0, 0])
                slot[0] += int(count)
                slot[1] += int(recent)
                result.bytes_by_tenant[int(tenant_id)] = (
                    result.bytes_by_tenant.get(int(tenant_id), 0) + int(size or 0))
    return result


def measure_shards(*, recent_seconds: float = 3600.0,
                   shards: Iterable[str] | None = None) -> dict[str, ShardMeasurement]:
    """Every shard primary at once; raises RuntimeError naming the shards that failed."""
    shard_map = get_shard_map()
    names = list(shards) if shards is not None else list(shard_map.shard_names)
    tables = sharded_tables()
    results: dict[str, ShardMeasurement] = {}
    errors: dict[str, str] = {}

    def one(name: str) -> None:
        try:
            results[name] = measure_shard(shard_map.shard(name).primary.direct_dsn, name, tables,
                                          recent_seconds=recent_seconds)
        except Exception as exc:
            errors[name] = " ".join(str(exc).split()) or type(exc).__name__

    with ThreadPoolExecutor(max_workers=max(len(names), 1)) as pool:
        list(pool.map(one, names))
    if errors:
        detail = "; ".join(f"{name}: {message}" for name, message in sorted(errors.items()))
        raise RuntimeError(f"could not measure {len(errors)} shard(s): {detail}")
    return results


@dataclass
class Measurement:
    tenants: list[TenantLoad]
    shards: list[ShardInfo]
    per_shard: dict[str, ShardMeasurement]
    # rows found on a shard for tenants the directory places elsewhere (a move's copy on its
    # target, or its source rows waiting for cleanup): shard -> rows
    stray: dict[str, int]


def measure(*, recent_seconds: float = 3600.0) -> Measurement:
    """Tenants from the directory (control primary) with their sizes on their own shard, and
    the shards with whether they accept tenants (the registry)."""
    shard_map = get_shard_map()
    registry = {s.name: s for s in Shard.objects.using(CONTROL_ALIAS).all()}
    shards = []
    for name in shard_map.shard_names:
        row = registry.get(name)
        if row is None:
            shards.append(ShardInfo(name, False, "not registered: run migrate_shards"))
        else:
            shards.append(ShardInfo(name, row.accepts_tenants,
                                    "" if row.accepts_tenants else "closed to new tenants"))
    per_shard = measure_shards(recent_seconds=recent_seconds)
    moving = set(MoveJob.objects.using(CONTROL_ALIAS).filter(state__in=MoveJob.ACTIVE_STATES)
                 .values_list("tenant_id", flat=True))
    tenants = []
    placed: dict[str, set[int]] = {}
    for tenant_id, slug, shard, state in (
        Tenant.objects.using(CONTROL_ALIAS).order_by("id")
        .values_list("id", "slug", "shard", "state")
    ):
        if shard not in per_shard:
            continue  # placed on a shard missing from the topology: not ours to plan
        rows, recent = per_shard[shard].by_tenant.get(tenant_id, [0, 0])
        movable = tenant_id not in moving and state == Tenant.State.ACTIVE
        tenants.append(TenantLoad(tenant_id, slug, shard, rows, recent, movable))
        placed.setdefault(shard, set()).add(tenant_id)
    stray = {
        name: sum(v[0] for tid, v in m.by_tenant.items() if tid not in placed.get(name, set()))
        for name, m in per_shard.items()
    }
    return Measurement(tenants=tenants, shards=shards, per_shard=per_shard, stray=stray)
