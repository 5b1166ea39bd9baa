"""The verification steps of a tenant move (`migrations_tools.moves.Mover`).

- at the flip: the frozen source against a snapshot of the target taken at the flip; a
  difference fails the move with the source rows kept;
- resumed after a crash past the flip (the snapshot died with the command): what can still be
  compared (`verify_resumed`); short of a clean result the job ends "unverified", the source
  rows stay, and only `move_tenant --accept-unverified` removes them.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.utils import timezone

from migrations_tools import replication, verify
from migrations_tools.move_jobs import MoveError, MoveSettings
from migrations_tools.tenant_rows import Progress
from migrations_tools.verify_resumed import ResumedDiff, compare_since_flip
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob, Tenant

State = MoveJob.State


class VerifySteps:
    """Mixed into Mover, which provides these."""

    job: MoveJob
    settings: MoveSettings
    progress: Progress
    tables: list[str]
    target_dsn: str
    _target_snapshot: psycopg.Connection[Any] | None

    @property
    def source(self) -> psycopg.Connection[Any]:
        raise NotImplementedError

    def _set(self, state: str | None = None, **fields: Any) -> None:
        raise NotImplementedError

    def _report(self, **items: Any) -> None:
        raise NotImplementedError

    def drop_replication(self) -> None:
        raise NotImplementedError

    def _verify(self) -> None:
        snapshot = self._target_snapshot
        if snapshot is None:  # the command died after the flip: its snapshot went with it
            self._verify_resumed()
            return
        diffs = verify.compare(self.source, snapshot, self.tables, self.job.tenant_id)
        snapshot.rollback()
        snapshot.close()
        self._target_snapshot = None
        clean = all(d.clean for d in diffs)
        self._report(verification={"note": "against the target's snapshot at the flip",
                                   "tables": [
            {"table": d.table, "source_rows": d.source_rows, "target_rows": d.target_rows,
             "bad_buckets": d.bad_buckets} for d in diffs]})
        self.progress("verified: " + ", ".join(
            f"{d.table} {d.source_rows}={d.target_rows}" if d.clean
            else f"{d.table} {d.source_rows}!={d.target_rows} buckets {d.bad_buckets}"
            for d in diffs))
        if not clean:
            self._set(State.FAILED, verified=False, finished_at=timezone.now(),
                      error="verification found differences; source rows kept (fenced)")
            raise MoveError(f"verification failed for job {self.job.pk}: the tenant serves "
                            "from the target; the source rows are kept for inspection")
        self._set(State.CLEANUP, verified=True)

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
