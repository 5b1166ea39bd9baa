"""A tenant move whose source or target shard fails over: detected, and the copy restarted.

PostgreSQL 15 does not carry a logical replication slot across a failover: the source's new
leader has the move's publication (catalogs are replicated) but not its slot, so the stream the
target was applying is gone, and with it any proof that the target's rows are the source's. A
target that fails over keeps its subscription and how far it applied, but only as far as its
standby had it, which synchronous replication guarantees only while a synchronous standby is
attached (Patroni's non-strict mode commits alone while the standby rejoins). So a failover of
either side before the flip **restarts the copy on the new leaders**: the subscription is detached
and dropped, any slot left is dropped, the rows copied to the target and a fence of this move
are removed, and the job goes back to `pending`, from where the copy starts over (new slot, new
snapshot, new subscription) and the continuous verification starts afresh. A restart costs one
copy; the alternative, aborting, would cost the operator a rerun and the same copy. The tenant is
served from the source throughout. After the flip the target serves the tenant and the copy is
finished: the move goes on against the new leaders (a verification whose snapshot of the target
died with the old target leader takes the resumed path of `verify_resumed`).

Detection: every step's error that is a lost session (see `failover.connection_lost`) or the
move's own "slot vanished", and every start of a command, compare each side's server identity
(system identifier, timeline, address) with the one the job recorded. A failover is a changed
identity; a lost session on unchanged servers retries the step. If a side has no writable leader
within `MoveSettings.failover_wait`, or fails over more than `failover_restarts` times in one
command, the command stops with a `MoveError` that says so: the job keeps its state, the tenant
its source (before the flip), and a rerun of the same `move_tenant` resumes (restarting the copy)
once the shard has a leader; `--abort` rolls it back, leaving nothing on either side.
"""

from __future__ import annotations

import time
from typing import Any

import psycopg
from django.db import DatabaseError, connections
from psycopg import sql

from migrations_tools import replication
from migrations_tools.failover import (
    NoLeader,
    ServerIdentity,
    connection_lost,
    first_line,
    wait_for_leader,
)
from migrations_tools.move_jobs import MoveError
from migrations_tools.move_parts import MoverParts
from migrations_tools.tenant_rows import delete_tenant_rows
from shards import pg
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob, Tenant
from shards.topology import get_shard_map

State = MoveJob.State
BEFORE_FLIP = (State.PENDING, State.COPYING, State.CATCHING_UP, State.CUTOVER)
SIDES = ("source", "target")


def drop_replication(source: psycopg.Connection[Any], target: psycopg.Connection[Any],
                     name: str) -> None:
    """A move's subscription, publication and slots, whether or not the source still has the
    slot: the subscription is detached from it before it is dropped (a plain DROP SUBSCRIPTION
    fails when the slot is gone, as after a failover of the source), then the slots are dropped
    on the source, their walsenders ended first."""
    row = target.execute("SELECT oid FROM pg_subscription WHERE subname = %s",
                         [name]).fetchone()
    oid = row[0] if row else None
    if oid is not None:
        ident = sql.Identifier(name)
        target.execute(sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(ident))
        target.execute(sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(ident))
        target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(ident))
    replication.drop_publication(source, name)
    sysid = replication.system_identifier(target)
    for _attempt in range(100):
        try:
            replication.drop_slots(source, name, oid, sysid)
            return
        except psycopg.errors.ObjectInUse:
            # The disabled apply worker's walsender, ended by drop_slots, had not let go yet.
            time.sleep(0.1)
    raise MoveError(f"slot {name} stays in use on the source; run shard_status --sweep")


def drop_standby_slots(cluster: str, name: str) -> list[str]:
    """Drop the slot `name` on every member of `cluster` that is a standby now. A leader that
    failed and rejoined as a standby keeps its logical slots (pg_rewind leaves pg_replslot
    alone) and, on PostgreSQL 15, a slot on a standby only holds WAL there: it can never be
    used. The leader is left alone: its slot of that name is the move's live one. Returns the
    members that could not be reached."""
    unreachable = []
    for member in get_shard_map().shard(cluster).replicas:
        try:
            with pg.connect(member.direct_dsn, connect_timeout=2,
                            application_name="shardsvc move slot sweep") as conn:
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE slot_name = %s AND active_pid IS NULL AND pg_is_in_recovery()",
                    [name])
        except psycopg.OperationalError:  # down, or starting up as it rejoins
            unreachable.append(member.alias)
    return unreachable


class FailoverSteps(MoverParts):
    """Mixed into Mover."""

    _failovers_seen: int = 0

    def _leaders(self) -> dict[str, ServerIdentity]:
        wait = self.settings.failover_wait
        try:
            return {
                "source": wait_for_leader(self.source_dsn, what=self.job.source, timeout=wait),
                "target": wait_for_leader(self.target_dsn, what=self.job.target, timeout=wait),
            }
        except NoLeader as exc:
            where = ("the tenant is still served from " + self.job.source
                     if self.job.state in BEFORE_FLIP else "the tenant is served from "
                     + self.job.target)
            raise MoveError(
                f"{exc}: job {self.job.pk} stays at {self.job.state} and {where}. Once the "
                "shard has a leader again (manage.py shard_status), rerun the same move_tenant "
                "to resume it, or roll it back with move_tenant --abort") from exc

    def _reread_job(self, exc: BaseException) -> None:
        """The lost session may have been the control database's (its primary failed over:
        the job and the directory live there). Django's session to it is dropped, and the job
        is read back as control has it once a control primary answers: a step whose last
        bookkeeping (or the flip itself) did not commit runs again from the state committed,
        as a rerun of the command would."""
        wait = self.settings.failover_wait
        deadline = time.monotonic() + wait
        while True:
            connections[CONTROL_ALIAS].close()
            try:
                wait_for_leader(get_shard_map().control.primary.direct_dsn,
                                what="the control cluster",
                                timeout=max(0.0, deadline - time.monotonic()))
                self.job.refresh_from_db(using=CONTROL_ALIAS)
                return
            except (NoLeader, DatabaseError) as failed:
                # A new leader is reached directly before PgBouncer's entry follows it.
                if time.monotonic() + 0.2 > deadline or not (
                        isinstance(failed, NoLeader) or connection_lost(failed)):
                    raise MoveError(
                        f"lost the control database ({first_line(exc)}) and could not read "
                        f"job {self.job.pk} back within {wait:.0f} s ({first_line(failed)}): "
                        "once control has a leader (manage.py shard_status), rerun the same "
                        "move_tenant to resume it") from exc
                time.sleep(0.2)

    def _changes(self, now: dict[str, ServerIdentity]) -> list[str]:
        recorded = self.job.report.get("servers") or {}
        changes = []
        for side in SIDES:
            if side not in recorded:
                continue
            before = ServerIdentity.from_dict(recorded[side])
            if before != now[side]:
                shard = self.job.source if side == "source" else self.job.target
                changes.append(f"{shard} (the {side}) failed over: {before.describe()} -> "
                               f"{now[side].describe()}")
        return changes

    def check_servers(self) -> None:
        """At the start of a command: a failover while no command drove the move is handled
        as one during a step."""
        now = self._leaders()
        changes = self._changes(now)
        if changes:
            self._after_failover(changes, now)
        else:
            self._report(servers={side: now[side].as_dict() for side in SIDES})

    def recover(self, exc: BaseException) -> bool:
        """After a step raised `exc`: True when it was a failover (handled: the job may be set
        back to pending) or a lost session on unchanged servers (the step runs again)."""
        lost = connection_lost(exc)
        if not lost and not isinstance(exc, MoveError):
            return False
        if lost:
            self._reread_job(exc)
        now = self._leaders()
        changes = self._changes(now)
        if not changes and not lost:
            return False  # the step's own error
        self.close()
        self._target_snapshot = None  # a session of the old target leader, if it failed over
        if not changes:
            if self._failovers_seen < self.settings.failover_restarts:
                self._failovers_seen += 1
                self.progress(f"lost a session ({str(exc).strip().splitlines()[0]}); both "
                              "shards have the same leader: running the step again")
                return True
            return False
        if self._failovers_seen >= self.settings.failover_restarts:
            raise MoveError(
                f"{'; '.join(changes)}, after {self._failovers_seen} failover(s) in this "
                f"command already: job {self.job.pk} stays at {self.job.state}. Rerun the "
                "same move_tenant once the shards are stable, or roll it back with "
                "move_tenant --abort") from exc
        self._after_failover(changes, now)
        return True

    def _after_failover(self, changes: list[str], now: dict[str, ServerIdentity]) -> None:
        self._failovers_seen += 1
        self.job.refresh_from_db(using=CONTROL_ALIAS)
        for change in changes:
            self.progress(change)
        history = [*self.job.report.get("failovers", []),
                   {"at": time.time(), "state": self.job.state, "changes": changes}]
        if self.job.state in BEFORE_FLIP:
            self.progress("the replication slot does not survive a failover (PostgreSQL 15): "
                          "restarting the copy on the new leader(s)")
            self._restart_copy()
        else:
            self.progress(f"the target serves the tenant already ({self.job.state}): going on "
                          "with the new leader(s)")
        self._report(failovers=history, servers={side: now[side].as_dict() for side in SIDES})
        self.sweep_standbys(wait=0)

    def sweep_standbys(self, *, wait: float) -> None:
        """After a failover during this move: its slot on the members that are standbys now
        (the failed leader once it rejoined), waiting up to `wait` seconds for every member
        to answer. A member still away is named: `shard_status --sweep` is for it later."""
        if not self.job.report.get("failovers"):
            return
        deadline = time.monotonic() + wait
        while True:
            away = [member for shard in (self.job.source, self.job.target)
                    for member in drop_standby_slots(shard, self.name)]
            if not away or time.monotonic() > deadline:
                break
            time.sleep(1.0)
        if away and wait:
            self.progress(f"could not reach {', '.join(away)} to drop a stale slot {self.name} "
                          "(a failed leader that has not rejoined?): once it is back, "
                          "manage.py shard_status --sweep drops it")
            self._report(unswept_members=away)

    def _restart_copy(self) -> None:
        shard = Tenant.objects.using(CONTROL_ALIAS).values_list("shard", flat=True).get(
            id=self.job.tenant_id)
        if shard != self.job.source:  # the state and the flip commit together: never here
            raise MoveError(f"job {self.job.pk} is {self.job.state} but the directory names "
                            f"{shard}: inspect it before going on")
        drop_replication(self.source, self.target, self.name)
        removed = delete_tenant_rows(self.target, self.tables, self.job.tenant_id,
                                     batch=self.settings.delete_batch, pause=0)
        # A cutover cut short leaves its fence (a lease of fence_lease seconds) on the source:
        # the directory still names the source, so the tenant's writers must get through.
        self.source.execute("DELETE FROM shardsvc_fence WHERE tenant_id = %s",
                            [self.job.tenant_id])
        # The ranges verified before were of the old copy.
        self.job.report = {k: v for k, v in self.job.report.items() if k != "continuous"}
        self._continuous_deadline = None
        self._set(State.PENDING, report=self.job.report, rows_copied=0, lag_bytes=0)
        self.progress(f"removed {removed} copied rows from {self.job.target}; copying again")
