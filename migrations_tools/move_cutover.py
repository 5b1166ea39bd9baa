"""A move's cutover: fence the source, wait out what predates the fence, flip the directory.

The writers' pause runs from the fence to the flip, recorded step by step (`cutover_ms` in the
job's report). A cutover that does not get to the flip within `cutover_timeout` lifts the fence
(when the directory certainly still names the source) and goes back to catching up; the mover
tries again `cutover_attempts` times in all before the command fails and leaves the job for a
rerun. A failover behind the failure is not retried here: `move_failover` restarts the copy.
"""

from __future__ import annotations

import logging
import os
import time

from django.db import transaction

from migrations_tools import replication
from migrations_tools.move_jobs import MoveError
from migrations_tools.move_parts import MoverParts
from migrations_tools.move_progress import CutoverSteps
from migrations_tools.verify_resumed import current_snapshot
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.directory import set_placement
from shards.lsn import insert_lsn
from shards.models import MoveJob, Tenant

logger = logging.getLogger(__name__)
State = MoveJob.State


class CutoverStage(MoverParts):
    """Mixed into Mover."""

    _cutovers_failed: int = 0
    _cutover_gave_up: BaseException | None = None  # the error this command's last cutover raised

    def _wait_applied(self, lsn: int, deadline: float) -> None:
        while (replication.confirmed_lsn(self.source, self.name) or 0) < lsn:
            if time.monotonic() > deadline:
                raise MoveError("the target did not apply the source's last writes in time")
            time.sleep(0.005)

    def _cutover(self) -> None:
        tenant_row = Tenant.objects.using(CONTROL_ALIAS).get(id=self.job.tenant_id)
        if tenant_row.shard == self.job.target:  # flipped before a crash
            self._set(State.FLIPPED)
            return
        timeout = self.settings.cutover_timeout
        deadline = time.monotonic() + timeout
        if timeout >= self.settings.fence_lease / 2:
            raise MoveError("cutover_timeout must stay well below the fence lease")
        # Connected before the fence: a new session's start-up (10-30 ms on a busy host)
        # would otherwise lengthen the writers' pause. Its snapshot is taken after the fence.
        snapshot = replication.connect(self.target_dsn, purpose=f"verify {self.job.pk}")
        snapshot.autocommit = False
        if self._target_snapshot is not None:  # an earlier attempt's
            self._target_snapshot.close()
        self._target_snapshot = snapshot
        with self.source.transaction():
            self.source.execute("SET LOCAL synchronous_commit = on")
            self.source.execute(
                "INSERT INTO shardsvc_fence (tenant_id, job_id, expires_at) "
                "VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s)) "
                "ON CONFLICT (tenant_id) DO UPDATE SET job_id = EXCLUDED.job_id, "
                "fenced_at = clock_timestamp(), expires_at = EXCLUDED.expires_at",
                [self.job.tenant_id, self.job.pk, self.settings.fence_lease])
        fenced = time.monotonic()
        steps = CutoverSteps(fenced)
        fence_time = pg.fetch_value(self.source, "SELECT clock_timestamp()")
        if self.crash_at == "fenced":
            os._exit(70)  # fault injection: die holding the fence (see run())
        try:
            # Transactions whose snapshot predates the fence may still write: wait them out.
            while pg.fetch_value(
                self.source,
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND backend_type = 'client backend' AND pid <> pg_backend_pid() "
                "AND xact_start < %s", [fence_time],
            ):
                if time.monotonic() > deadline:
                    raise MoveError(f"transactions older than the fence ran past {timeout:.0f} "
                                    "s on the source; the move stays on the source, retry it")
                time.sleep(0.002)
            steps.done("older_transactions")
            last_write = self._flush_source()
            steps.done("flush")
            self._wait_applied(last_write, deadline)
            steps.done("applied")
            # Snapshot of the target as the copy left it, for verification after the flip.
            snapshot.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            flip_snapshot = current_snapshot(snapshot)
            min_lsn = insert_lsn(self.target)
            # From here on the fence must outlive any crash: writers with a stale placement
            # must never write to the source again. Checked to still be ours first.
            kept = self.source.execute(
                "UPDATE shardsvc_fence SET expires_at = 'infinity' WHERE tenant_id = %s "
                "AND job_id = %s AND expires_at > clock_timestamp() + make_interval(secs => %s)",
                [self.job.tenant_id, self.job.pk, self.settings.fence_lease / 2],
            ).rowcount
            if not kept:
                raise MoveError("the fence lease ran out before the flip; retry the move")
            steps.done("snapshot")
            with transaction.atomic(using=CONTROL_ALIAS):
                set_placement(self.job.tenant_id, self.job.target, min_lsn=min_lsn,
                              state=Tenant.State.ACTIVE)
                pause_ms = (time.monotonic() - fenced) * 1000
                steps.done("flip")
                self._set(State.FLIPPED, flip_lsn=min_lsn, write_pause_ms=round(pause_ms, 2),
                          flip_snapshot=flip_snapshot)
        except BaseException as exc:
            if self.job.state == State.CUTOVER:
                self._after_failed_cutover()
                self._cutover_gave_up = exc
            raise
        # Pairs, in order: the report is jsonb, which orders an object's keys its own way.
        self._report(flipped_at=time.time(), cutover_ms=list(steps.ms.items()))
        self.progress(f"flipped to {self.job.target}: writes paused {pause_ms:.1f} ms "
                      f"({steps.text()})")

    def _retry_cutover(self, exc: BaseException) -> bool:
        """True when a cutover that gave up (fence lifted, back to catching up, no failover
        behind it) gets another attempt: a busy moment (old transactions, a slow apply) passes,
        and a rerun by hand would do the same."""
        if (exc is not self._cutover_gave_up or not isinstance(exc, MoveError)
                or self.job.state != State.CATCHING_UP):
            return False
        self._cutovers_failed += 1
        self._report(cutover_failures=[*self.job.report.get("cutover_failures", []), str(exc)])
        attempts = self.settings.cutover_attempts
        if self._cutovers_failed >= attempts:
            if attempts > 1:
                raise MoveError(f"{exc} (cutover attempt {attempts}/{attempts}; job "
                                f"{self.job.pk} stays at catching_up: rerun the same "
                                "move_tenant later, or --abort)") from exc
            return False
        self.progress(f"cutover attempt {self._cutovers_failed}/{attempts} gave up ({exc}); "
                      f"writes unfenced, trying again in {self.settings.cutover_retry_pause:g} s")
        time.sleep(self.settings.cutover_retry_pause)
        return True

    def _flush_source(self) -> int:
        """The source's WAL position past every commit so far, flushed so the walsender can
        send it. Commits made with synchronous_commit=off may sit unflushed for up to
        wal_writer_delay; one synchronous commit of ours flushes everything before it."""
        with self.source.transaction():
            self.source.execute("SET LOCAL synchronous_commit = on")
            self.source.execute("UPDATE shardsvc_fence SET fenced_at = fenced_at "
                                "WHERE tenant_id = %s", [self.job.tenant_id])
        return insert_lsn(self.source)

    def _after_failed_cutover(self) -> None:
        """Lift the fence only when the directory certainly still names the source: if the
        flip's commit was lost in flight it may have happened, and lifting the fence then would
        let stale writers write to the old shard. Unsure: keep the fence; a rerun settles it."""
        try:
            shard = Tenant.objects.using(CONTROL_ALIAS).values_list("shard", flat=True).get(
                id=self.job.tenant_id)
        except Exception:
            logger.exception("cutover failed and the directory cannot be read: fence kept")
            return
        if shard == self.job.target:
            self._set(State.FLIPPED)
            return
        self.source.execute("DELETE FROM shardsvc_fence WHERE tenant_id = %s",
                            [self.job.tenant_id])
        self._set(State.CATCHING_UP)
