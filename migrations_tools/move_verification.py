"""The verification steps of a tenant move (`migrations_tools.moves.Mover`).

- at the flip: the frozen source against a snapshot of the target taken at the flip; a
  difference fails the move with the source rows kept;
- before the cutover, while catching up: settled id ranges compared one at a time, each table
  apart (`verify_ranges`); the verification at the flip then skips, table by table, those
  still unchanged;
- resumed after a crash past the flip (the snapshot died with the command): what can still be
  compared (`verify_resumed`); short of a clean result the job ends "unverified", the source
  rows stay, and only `move_tenant --accept-unverified` removes them.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.utils import timezone

from migrations_tools import replication, verify, verify_ranges
from migrations_tools.move_jobs import MoveError
from migrations_tools.move_parts import MoverParts
from migrations_tools.verify_resumed import ResumedDiff, compare_since_flip
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob, Tenant

State = MoveJob.State
MAX_TRIES = 3  # compare a range this often while it keeps changing, then leave it to the flip
APPLY_WAIT = 10.0  # seconds to wait for the target to apply what a range's snapshot saw


class VerifySteps(MoverParts):
    """Mixed into Mover."""

    def _verify(self) -> None:
        snapshot = self._target_snapshot
        if snapshot is None:  # the command died after the flip: its snapshot went with it
            self._verify_resumed()
            return
        skipped = self._still_verified_ranges()
        diffs = []
        for table in self.tables:
            condition, params = verify_ranges.outside(skipped[table])
            diffs += verify.compare(self.source, snapshot, [table], self.job.tenant_id,
                                    condition=condition, params=params)
        snapshot.rollback()
        snapshot.close()
        self._target_snapshot = None
        clean = all(d.clean for d in diffs)
        # Ranges verified before the cutover and unchanged since, in every table (a table's
        # rows in a range are skipped as soon as they are, whatever the other tables' are).
        everywhere = set.intersection(*(set(r) for r in skipped.values())) if skipped else set()
        self._report(verification={
            "note": "against the target's snapshot at the flip",
            "skipped_ranges": len(everywhere),
            "skipped_by_table": {table: len(ranges) for table, ranges in skipped.items()},
            "tables": [{"table": d.table, "source_rows": d.source_rows,
                        "target_rows": d.target_rows, "bad_buckets": d.bad_buckets}
                       for d in diffs]})
        self.progress("verified: " + ", ".join(
            f"{d.table} {d.source_rows}={d.target_rows}" if d.clean
            else f"{d.table} {d.source_rows}!={d.target_rows} buckets {d.bad_buckets}"
            for d in diffs) + (f" (and {len(everywhere)} id ranges verified before the cutover)"
                               if everywhere else ""))
        if not clean:
            self._set(State.FAILED, verified=False, finished_at=timezone.now(),
                      error="verification found differences; source rows kept (fenced)")
            raise MoveError(f"verification failed for job {self.job.pk}: the tenant serves "
                            "from the target; the source rows are kept for inspection")
        self._set(State.CLEANUP, verified=True)

    # --- continuous verification, before the cutover

    def _compare_next_range(self) -> bool:
        """Compare one settled id range not verified yet, in the tables not verified in it yet.
        False when none is left, or the time allowed for it is spent (the rest is verified at
        the flip).

        Tables are verified apart: a range that holds a few rows written all the time (a busy
        thread's comment counter) would otherwise keep every other table's rows in it, which
        no longer change, for the flip, where they are compared while writes go on."""
        budget = self.settings.continuous_verify_seconds
        if budget <= 0:
            return False
        if self._continuous_deadline is None:
            self._continuous_deadline = time.monotonic() + budget
        if time.monotonic() > self._continuous_deadline:
            return False
        plan = self.job.report.get("continuous") or self._plan_ranges()
        pending = [i for i in range(len(plan["ranges"])) if self._unverified_tables(plan, i)
                   and plan["tries"].get(str(i), 0) < MAX_TRIES]
        if not pending:
            return False
        index = pending[0]
        lo, hi = plan["ranges"][index]
        tables, tenant_id = self._unverified_tables(plan, index), self.job.tenant_id
        seen = verify_ranges.read_source(self.source, tables, tenant_id, (lo, hi))
        try:
            self._wait_applied(seen.lsn, time.monotonic() + APPLY_WAIT)
            target = verify_ranges.read_target(self.target, tables, tenant_id, (lo, hi))
        except MoveError:
            target = None  # busy: count a try, compare again later
        differ = [] if target is None else [t for t in tables
                                            if target[t] != seen.checksums[t]]
        matching = [] if target is None else [t for t in tables if t not in differ]
        counts = seen.rows()
        if matching:
            entry = plan["verified"].setdefault(str(index), {"snapshot": {}, "rows": {}})
            for table in matching:
                entry["snapshot"][table] = seen.snapshot
                entry["rows"][table] = counts[table]
        if differ and verify_ranges.unchanged_since(self.source, differ, tenant_id, (lo, hi),
                                                    seen.snapshot, counts):
            self._report(continuous={**plan, "differs": [lo, hi]})
            raise MoveError(
                f"continuous verification: the tenant's rows with ids in [{lo}, {hi}) differ "
                f"between {self.job.source} and {self.job.target} although they did not "
                "change on the source meanwhile. Nothing was cut over: the tenant serves "
                f"from {self.job.source}. Abort the move (move_tenant <tenant> --abort) and "
                "look at the target's log before trying again")
        if target is None or differ:  # changed while compared: try again later
            plan["tries"][str(index)] = plan["tries"].get(str(index), 0) + 1
        self._report(continuous=plan)
        matched = sum(1 for i in range(len(plan["ranges"]))
                      if not self._unverified_tables(plan, i))
        rows = sum(sum(v["rows"].values()) for v in plan["verified"].values())
        self.progress(f"continuous verification: {matched}/{len(plan['ranges'])} id ranges "
                      f"match ({rows} rows)")
        return True

    def _unverified_tables(self, plan: dict[str, Any], index: int) -> list[str]:
        done = (plan["verified"].get(str(index)) or {}).get("rows", {})
        return [t for t in self.tables if t not in done]

    def _plan_ranges(self) -> dict[str, Any]:
        lo = verify_ranges.lowest_id(self.source, self.tables, self.job.tenant_id)
        hi = verify_ranges.settled_below(round(time.time() * 1000), self.settings.settle_seconds)
        ranges = ([] if lo is None else
                  verify_ranges.plan_ranges(lo, hi, self.settings.continuous_ranges))
        plan: dict[str, Any] = {"ranges": ranges, "verified": {}, "tries": {}}
        self._report(continuous=plan)
        return plan

    def _still_verified_ranges(self) -> dict[str, list[tuple[int, int]]]:
        """Per table, the ranges verified before the cutover whose (now frozen) source rows
        are unchanged."""
        plan = self.job.report.get("continuous") or {}
        kept: dict[str, list[tuple[int, int]]] = {table: [] for table in self.tables}
        for index, seen in (plan.get("verified") or {}).items():
            lo, hi = plan["ranges"][int(index)]
            snapshots = seen["snapshot"]
            if isinstance(snapshots, str):  # a job planned when a range had one snapshot
                snapshots = dict.fromkeys(seen["rows"], snapshots)
            for table, snapshot in snapshots.items():
                if table in kept and verify_ranges.unchanged_since(
                        self.source, [table], self.job.tenant_id, (lo, hi), snapshot,
                        seen["rows"]):
                    kept[table].append((lo, hi))
        return kept

    def _verify_resumed(self) -> None:
        """After a crash past the flip: compare what can still be compared (see
        verify_resumed); anything short of a clean result keeps the source rows."""
        diffs: list[ResumedDiff] = []
        why = "no target snapshot was recorded at the flip"
        if self.job.flip_snapshot:
            conn = replication.connect(self.target_dsn, purpose=f"verify {self.job.pk}")
            try:
                conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
                with conn.transaction():
                    diffs = compare_since_flip(self.source, conn, self.tables,
                                               self.job.tenant_id, self.job.flip_snapshot)
            finally:
                conn.close()
            why = "; ".join(f"{d.table}: {d.source_rows} source rows vs {d.target_rows} "
                            f"unchanged on the target, buckets {d.bad_buckets}"
                            for d in diffs if not d.clean)
        self._report(verification={
            "note": "resumed after the flip: the frozen source against the target's rows "
                    "not written since the flip (rows written since are counted, not compared)",
            "tables": [{"table": d.table, "source_rows": d.source_rows,
                        "target_rows": d.target_rows, "written_since_flip": d.written_since,
                        "bad_buckets": d.bad_buckets} for d in diffs]})
        self.progress("verified (resumed): " + ", ".join(
            f"{d.table} {d.source_rows}={d.target_rows} (+{d.written_since} written since)"
            if d.clean else f"{d.table} {d.source_rows}!={d.target_rows} buckets "
            f"{d.bad_buckets}" for d in diffs))
        if diffs and all(d.clean for d in diffs):
            self._set(State.CLEANUP, verified=True)
            return
        # Nothing may hold WAL while an operator looks: the source is fenced, nothing flows.
        self.drop_replication()
        self._set(State.UNVERIFIED, verified=None, error=f"not verified: {why}"[:2000])
        raise MoveError(self.unverified_message(why))

    def unverified_message(self, why: str) -> str:
        slug = Tenant.objects.using(CONTROL_ALIAS).values_list("slug", flat=True).get(
            id=self.job.tenant_id)
        return (f"job {self.job.pk} is UNVERIFIED: the tenant serves from {self.job.target}, "
                f"but the copy could not be verified after the move resumed past the flip "
                f"({why}); rows deleted on the target since the flip look the same as rows the "
                f"copy lost. The source rows on {self.job.source} are kept (fenced) for "
                "inspection. Once you accept the target as it is, finish the cleanup with "
                f"`manage.py move_tenant {slug} {self.job.target} --accept-unverified`")

    def _unverified(self) -> None:
        if not self.settings.accept_unverified:
            raise MoveError(self.unverified_message(self.job.error or "see the job's report"))
        self._report(accepted_unverified_at=time.time())
        self.progress("unverified copy accepted by the operator: cleaning up the source")
        self._set(State.CLEANUP, error="")
