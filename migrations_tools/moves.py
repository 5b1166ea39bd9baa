"""Online tenant moves: copy with logical replication, fence, flip, verify, clean up.

    pending -> copying -> catching_up -> cutover -> flipped -> cleanup -> done
         \\_________ abort (any state before flipped) __________/-> aborted
    flipped -> failed (a difference) | unverified (resumed, not provable) -> cleanup (accepted)

Every state is recorded in the control database (`shards.models.MoveJob`) before its work
starts, and every step can run again, so a move whose command died resumes where it stopped
(`move_tenant` again) or is rolled back (`move_tenant --abort`). Until the flip the tenant is
served from the source; after it, from the target. Why each wait is the one it is:

- initial copy done: every `pg_subscription_rel.srsubstate` is 'r';
- applied on the target: the source slot's `confirmed_flush_lsn` has passed the position
  (the subscriber's received/latest_end positions run ahead of what is applied);
- transactions that began before the fence: the fence trigger stops READ COMMITTED writers at
  once, but a REPEATABLE READ or SERIALIZABLE transaction whose snapshot predates the fence does
  not see the fence row, so we wait until no client backend of the source database has an
  `xact_start` before the fence committed;
- verification compares the frozen source with a snapshot of the target taken at the flip, so it
  costs the writers no pause.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import psycopg
from django.db import DatabaseError, transaction
from django.utils import timezone

from migrations_tools import initial_copy, replication
from migrations_tools.move_failover import FailoverSteps, drop_replication
from migrations_tools.move_jobs import MoveError, MoveSettings
from migrations_tools.move_progress import CutoverSteps, clamp_progress, progress_text
from migrations_tools.move_verification import VerifySteps
from migrations_tools.tenant_rows import Progress, delete_tenant_rows, sharded_tables, tenant_rows
from migrations_tools.verify_resumed import current_snapshot
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.directory import set_placement
from shards.lsn import current_lsn, insert_lsn
from shards.models import MoveJob, Tenant
from shards.runtime import runtime
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.moves")
State = MoveJob.State


class Mover(VerifySteps, FailoverSteps):
    def __init__(self, job: MoveJob, *, settings: MoveSettings | None = None,
                 progress: Progress | None = None,
                 still_locked: Callable[[], None] | None = None,
                 crash_at: str | None = None) -> None:
        self.job = job
        # Fault injection for the crash tests: a state name (or "fenced") at which the
        # process dies like a killed one, with no cleanup of any kind.
        self.crash_at = crash_at
        self.settings = settings or MoveSettings()
        self.progress = progress or (lambda message: logger.info("%s", message))
        self.still_locked = still_locked or (lambda: None)
        shard_map = get_shard_map()
        self.source_dsn = shard_map.shard(job.source).primary.direct_dsn
        self.target_dsn = shard_map.shard(job.target).primary.direct_dsn
        self.tables = sharded_tables()
        self.name = job.replication_name
        self._source: psycopg.Connection[Any] | None = None
        self._target: psycopg.Connection[Any] | None = None
        self._target_snapshot: psycopg.Connection[Any] | None = None
        self._continuous_deadline: float | None = None

    # --- connections
    @property
    def source(self) -> psycopg.Connection[Any]:
        if self._source is None or self._source.closed:
            self._source = replication.connect(self.source_dsn, purpose=f"move {self.job.pk}")
        return self._source

    @property
    def target(self) -> psycopg.Connection[Any]:
        if self._target is None or self._target.closed:
            self._target = replication.connect(self.target_dsn, purpose=f"move {self.job.pk}")
        return self._target

    def close(self) -> None:
        for conn in (self._source, self._target, self._target_snapshot):
            if conn is not None and not conn.closed:
                conn.close()

    # --- bookkeeping
    def _set(self, state: str | None = None, **fields: Any) -> None:
        if state is not None:
            fields["state"] = state
        for key, value in fields.items():
            setattr(self.job, key, value)
        MoveJob.objects.using(CONTROL_ALIAS).filter(pk=self.job.pk).update(
            updated_at=timezone.now(), **fields)
        if state is not None:
            self.progress(f"[{self.job.state}]")

    def _report(self, **items: Any) -> None:
        self.job.report = {**self.job.report, **items}
        self._set(report=self.job.report)

    # --- the state machine
    def run(self) -> MoveJob:
        steps = {
            State.PENDING: self._begin,
            State.COPYING: self._wait_for_copy,
            State.CATCHING_UP: self._catch_up,
            State.CUTOVER: self._cutover,
            State.FLIPPED: self._verify,
            State.CLEANUP: self._cleanup,
            State.UNVERIFIED: self._unverified,
        }
        started = time.monotonic()
        try:
            self.check_servers()
            while self.job.state in steps:
                self.still_locked()
                if self.crash_at == self.job.state:
                    os._exit(70)  # fault injection: die at the start of this state's work
                try:
                    steps[State(self.job.state)]()
                # Django's errors: the job and the directory, on the control database.
                except (psycopg.Error, DatabaseError, MoveError) as exc:
                    if not self.recover(exc):  # a failover: resumed or restarted
                        raise
        finally:
            self.close()
        self._report(total_seconds=round(time.monotonic() - started, 3))
        return self.job

    def _begin(self) -> None:
        for table in self.tables:
            if pg.fetch_value(self.target, "SELECT to_regclass(%s)", [table]) is None:
                raise MoveError(f"{self.job.target} has no table {table}: run migrate_shards")
        already = tenant_rows(self.target, self.tables, self.job.tenant_id)
        if already:
            raise MoveError(
                f"{self.job.target} already holds {already} rows of this tenant (left by an "
                "earlier move?): run `move_tenant --abort` for it, which removes them")
        total = tenant_rows(self.source, self.tables, self.job.tenant_id)
        self._set(rows_total=total)
        self.progress(f"copying {total} rows of tenant {self.job.tenant_id} from "
                      f"{self.job.source} to {self.job.target} ({', '.join(self.tables)})")
        replication.create_publication(self.source, self.name, self.tables, self.job.tenant_id)
        self._set(State.COPYING)

    def _wait_for_copy(self) -> None:
        started = time.monotonic()
        # A command that died before subscribing resumes here: the copy starts over.
        if not replication.subscription_exists(self.target, self.name):
            if initial_copy.supported(self.target):
                self._copy_rows()
                replication.create_subscription(self.target, self.name, self.source_dsn,
                                                copy_data=False)
            else:
                self.progress("the target's direct user may not skip triggers: the "
                              "subscription copies the rows (slower)")
                self._copy_restart()
                replication.create_subscription(self.target, self.name, self.source_dsn)
        deadline = time.monotonic() + self.settings.copy_timeout
        last_print = 0.0
        while not replication.initial_sync_done(self.target, self.name):
            if time.monotonic() > deadline:
                raise MoveError("the initial copy did not finish within "
                                f"{self.settings.copy_timeout:.0f} s; see the target's log")
            if time.monotonic() - last_print > 1.0:
                copied = tenant_rows(self.target, self.tables, self.job.tenant_id)
                # The tenant writes during the copy: the total grows with what is copied.
                copied, total = clamp_progress(copied, self.job.rows_total)
                self._set(rows_copied=copied, rows_total=total)
                self.progress(f"copied {progress_text(copied, total)}")
                last_print = time.monotonic()
            time.sleep(self.settings.poll)
        seconds = time.monotonic() - started
        copied = tenant_rows(self.target, self.tables, self.job.tenant_id)
        self._report(copy_seconds=round(seconds, 3),
                     copy_rows_per_second=round(copied / seconds) if seconds > 0 else None)
        copied, total = clamp_progress(copied, self.job.rows_total)
        self._set(State.CATCHING_UP, rows_copied=copied, rows_total=total)

    def _copy_restart(self) -> None:
        """What a copy cut short left: its slot (its snapshot died with the command) and rows."""
        replication.drop_slots(self.source, self.name, None)
        if tenant_rows(self.target, self.tables, self.job.tenant_id):
            self.progress("removing the rows of an interrupted copy from the target")
            delete_tenant_rows(self.target, self.tables, self.job.tenant_id,
                               batch=self.settings.delete_batch, pause=0)

    def _copy_rows(self) -> None:
        self._copy_restart()
        purpose = f"move {self.job.pk} copy"

        def progress(finished: int) -> None:
            copied = finished + initial_copy.rows_in_flight(self.target, purpose)
            copied, total = clamp_progress(copied, self.job.rows_total)
            self._set(rows_copied=copied, rows_total=total)
            self.progress(f"copied {progress_text(copied, total)}")

        try:
            initial_copy.copy_tenant(self.source_dsn, self.target_dsn, self.name, self.tables,
                                     self.job.tenant_id, purpose=purpose, on_progress=progress)
        except psycopg.Error as exc:
            raise MoveError(f"the initial copy failed ({exc}); rerun the same move_tenant to "
                            "start the copy over, or roll it back with --abort") from exc

    def _lag(self) -> int:
        applied = replication.confirmed_lsn(self.source, self.name)
        if applied is None:
            raise MoveError(f"replication slot {self.name} vanished from {self.job.source}: "
                            "abort the move and start it again")
        return max(current_lsn(self.source) - applied, 0)

    def _catch_up(self) -> None:
        deadline = time.monotonic() + self.settings.copy_timeout
        while True:
            lag = self._lag()
            behind = lag > self.settings.catchup_lag_bytes
            if behind:
                self._set(lag_bytes=lag)
                self.progress(f"catching up: {lag} bytes behind")
                if time.monotonic() > deadline:
                    raise MoveError("the target does not catch up with the source")
            # Meanwhile, and once caught up until it is done, compare settled id ranges.
            if self._compare_next_range():
                continue
            if not behind:
                break
            time.sleep(0.2)
        self._set(State.CUTOVER, lag_bytes=lag)

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
        except BaseException:
            if self.job.state == State.CUTOVER:
                self._after_failed_cutover()
            raise
        # Pairs, in order: the report is jsonb, which orders an object's keys its own way.
        self._report(flipped_at=time.time(), cutover_ms=list(steps.ms.items()))
        self.progress(f"flipped to {self.job.target}: writes paused {pause_ms:.1f} ms "
                      f"({steps.text()})")

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

    def _cleanup(self) -> None:
        self.drop_replication()
        self.sweep_standbys(wait=self.settings.failover_wait)
        # Workers may route by a placement cached before the flip for DIRECTORY_LOCAL_TTL; their
        # reads must still find the rows (their writes hit the fence and retry on the target).
        grace = max(self.settings.grace_seconds,
                    runtime.conf().directory_local_ttl + 1.0)
        flipped_at = float(self.job.report.get("flipped_at", time.time()))
        wait = grace - (time.time() - flipped_at)
        if wait > 0:
            self.progress(f"grace period: keeping the source rows {wait:.1f} s more")
            time.sleep(wait)
        deleted = delete_tenant_rows(self.source, self.tables, self.job.tenant_id,
                                     batch=self.settings.delete_batch,
                                     pause=self.settings.delete_pause, progress=self.progress)
        self.source.execute("DELETE FROM shardsvc_fence WHERE tenant_id = %s",
                            [self.job.tenant_id])
        self._report(source_rows_deleted=deleted)
        self._set(State.DONE, finished_at=timezone.now(), lag_bytes=0)
        self.progress(f"done: {deleted} source rows removed")

    def drop_replication(self) -> None:
        drop_replication(self.source, self.target, self.name)

    def abort(self) -> MoveJob:
        """Back to the source, serving, with every replication object and copied row gone."""
        if self.job.state in (State.FLIPPED, State.CLEANUP, State.DONE, State.FAILED,
                              State.UNVERIFIED):
            accept = (" (an unverified one: inspect it, then `move_tenant <tenant> "
                      f"{self.job.target} --accept-unverified` removes the source rows)"
                      if self.job.state == State.UNVERIFIED else "")
            raise MoveError(f"job {self.job.pk} already flipped {self.job.source} -> "
                            f"{self.job.target}{accept}; to undo it, move the tenant back")
        if self.job.state == State.ABORTED:
            return self.job
        try:
            self.drop_replication()
            self.sweep_standbys(wait=0)
            delete_tenant_rows(self.target, self.tables, self.job.tenant_id,
                               batch=self.settings.delete_batch, pause=0)
            self.source.execute("DELETE FROM shardsvc_fence WHERE tenant_id = %s",
                                [self.job.tenant_id])
            with transaction.atomic(using=CONTROL_ALIAS):
                set_placement(self.job.tenant_id, self.job.source, state=Tenant.State.ACTIVE)
                self._set(State.ABORTED, finished_at=timezone.now())
        finally:
            self.close()
        self.progress(f"aborted: tenant {self.job.tenant_id} stays on {self.job.source}")
        return self.job
