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
from migrations_tools.move_cutover import CutoverStage
from migrations_tools.move_failover import FailoverSteps, drop_replication
from migrations_tools.move_jobs import MoveError, MoveSettings
from migrations_tools.move_progress import clamp_progress, progress_text
from migrations_tools.move_verification import VerifySteps
from migrations_tools.tenant_rows import Progress, delete_tenant_rows, sharded_tables, tenant_rows
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.directory import set_placement
from shards.lsn import current_lsn
from shards.models import MoveJob, Tenant
from shards.runtime import runtime
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.moves")
State = MoveJob.State


class Mover(CutoverStage, VerifySteps, FailoverSteps):
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
                    # A failover: resumed or restarted; else a cutover that gave up: again.
                    if not self.recover(exc) and not self._retry_cutover(exc):
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
