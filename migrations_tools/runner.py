"""Migrating the fleet: the control database first, then every selected shard primary in parallel.

Control goes first and alone: a shard's `pre_migrate` takes the shard's global id generator from
the registry in the control database, and control's `post_migrate` registers the shards.

Each database runs in a thread of this process with its own direct connection (see
`connections.py`), rather than in a subprocess per shard. A subprocess would pay Django's start-up
(about 0.4 s of CPU here) for every shard, more than the Python side of migrating a new shard
(about 0.1 s: loading the graph, rendering model states); in threads that Python share is
serialised by the GIL (so the graph is loaded from disk once per run, see `run_graph.py`, and
shards at the same migrations render their model states once, see `shared_states.py`), while
the database's share (DDL, commits, lock waits and retries, network round trips) overlaps, and
it is the share that grows on a real fleet with real tables.
tests/benchmarks/bench_migrate.py measures both. A child forked per shard after start-up (no
Django start-up to pay, a core each) was measured too: on this 2-core host, busy, it was no faster
than threads (8 shards in 0.97 s against 0.71 s, runs minutes apart), so threads stay. One
process also loads the migration files once, keeps results as plain objects (no output parsing),
and holds the cluster lock's session next to the work it guards.

Per database this does what Django's `migrate` does (consistency checks, `pre_migrate`, apply
the plan, `post_migrate`), except that migrations are applied one at a time so each gets the
lock_timeout retries of `safety.py`. Migrations are never unapplied here: the target is always
every app's latest migration.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from itertools import takewhile
from typing import Literal

from django.core.management.sql import emit_post_migrate_signal, emit_pre_migrate_signal
from django.db import connections, transaction
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration

from migrations_tools.blockers import BlockerWatch, describe_blockers
from migrations_tools.connections import direct_connections
from migrations_tools.errors import ClusterLockLost, MigrationFailed
from migrations_tools.failover import await_new_leader, connection_lost
from migrations_tools.lock import ClusterLock
from migrations_tools.plans import (
    Reporter,
    applied_state,
    full_plan,
    migration_label,
    record_applied,
    runs_here,
)
from migrations_tools.run_graph import RunGraph, check_replacements, executor_for
from migrations_tools.safety import (
    ExecutionPolicy,
    error_summary,
    explain_failure,
    is_retryable,
)
from migrations_tools.shared_states import (
    OperationStates,
    SharedStates,
    apply_migration,
    build_steps,
)
from shards.aliases import CONTROL_ALIAS
from shards.preparation import register_shards
from shards.topology import get_shard_map

Status = Literal["ok", "failed", "stopped", "skipped"]

# A database whose primary fails over mid-run is run again this many times (see failover.py).
FAILOVER_RETRIES = 2


# --- migrating ----------------------------------------------------------------------------------


@dataclass
class RunShared:
    """What the databases of one run share: the migration graph (loaded once), the rendered
    model states, and the shards' global id generators (read from the registry once)."""
    graph: RunGraph = field(default_factory=RunGraph)
    states: SharedStates = field(default_factory=SharedStates)
    generators: dict[str, int] = field(default_factory=dict)


@dataclass
class DatabaseResult:
    alias: str
    status: Status = "ok"
    applied: list[str] = field(default_factory=list)  # ran SQL here
    recorded: int = 0  # other databases' migrations Django recorded here
    remaining: list[str] = field(default_factory=list)  # still unapplied, after this run
    duration: float = 0.0
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class FleetResult:
    results: list[DatabaseResult]
    jobs: int
    control_seconds: float = 0.0
    shards_seconds: float = 0.0
    # This process's CPU during the shard phase (all threads): unlike the wall time, the load
    # of the machine barely moves it, so it shows what each extra shard costs in Python.
    shards_cpu_seconds: float = 0.0
    interrupted: bool = False

    @property
    def failed(self) -> list[DatabaseResult]:
        return [r for r in self.results if not r.ok]


def migrate_database(alias: str, *, policy: ExecutionPolicy, reporter: Reporter,
                     stop: threading.Event | None = None,
                     lock: ClusterLock | None = None,
                     shared: RunShared | None = None) -> DatabaseResult:
    """Apply every unapplied migration on one primary; never raises, the result says how it
    went. `stop` (set by --fail-fast or Ctrl-C) ends the run between two migrations; `shared`:
    what the other databases of the run share with this one."""
    stop = stop or threading.Event()
    shared = shared or RunShared()
    result = DatabaseResult(alias=alias)
    started = time.monotonic()
    # A shard's pre_migrate may read the shard registry on control: give it a direct session
    # too (connected only if used: migrate_fleet reads every shard's generator beforehand).
    aliases = (alias,) if alias == CONTROL_ALIAS else (alias, CONTROL_ALIAS)
    try:
        for attempt in range(1, FAILOVER_RETRIES + 2):
            reporter.status(alias, "connecting")
            try:
                with direct_connections(*aliases, policy=policy):
                    _migrate_connected(alias, connections[alias], result, policy, reporter,
                                       stop, lock, shared)
                break
            except Exception as exc:
                if (isinstance(exc, ClusterLockLost) or attempt > FAILOVER_RETRIES
                        or stop.is_set() or not connection_lost(exc)):
                    raise
                result.recorded = 0  # counted again by the next attempt
                reporter.status(alias, "waiting for a new leader")
                await_new_leader(alias, get_shard_map().server(alias).direct_dsn, exc,
                                 say=lambda text: reporter.line(alias, text),
                                 rerun=f"rerun migrate_shards (--shard {alias})")
    except ClusterLockLost as exc:
        stop.set()  # nothing more may start without the lock
        result.status, result.error = "failed", str(exc)
    except MigrationFailed as exc:
        result.status, result.error = "failed", str(exc)
    except Exception as exc:  # one database's failure must not stop the others
        result.status, result.error = "failed", error_summary(exc)
    finally:
        result.duration = time.monotonic() - started
        reporter.status(alias, None)
    if result.status == "failed":
        reporter.line(alias, f"FAILED: {result.error}")
    return result


def _migrate_connected(alias: str, connection: BaseDatabaseWrapper, result: DatabaseResult,
                       policy: ExecutionPolicy, reporter: Reporter, stop: threading.Event,
                       lock: ClusterLock | None, shared: RunShared) -> None:
    connection.prepare_database()
    executor = executor_for(connection, shared.graph)
    plan = full_plan(executor, connection)
    result.remaining = [migration_label(m) for m, _ in plan]
    migrations = [migration for migration, _ in plan]
    runs = [runs_here(alias, migration) for migration in migrations]
    key = (alias == CONTROL_ALIAS, frozenset(executor.loader.applied_migrations),
           tuple(migration_label(m) for m in migrations), tuple(runs))
    steps = shared.states.steps(key,
                                lambda: build_steps(applied_state(executor), migrations, runs))
    leading = list(takewhile(lambda here: not here, runs))  # no-ops before the first that runs
    # The set-up in one transaction, one commit (a wait for the disk) instead of three: the
    # django_migrations table, pre_migrate's work (the global id generator) and those no-ops.
    with transaction.atomic(using=alias):
        if plan:
            executor.recorder.ensure_schema()
        emit_pre_migrate_signal(0, False, alias, stdout=io.StringIO(), apps=steps.pre_apps,
                                plan=plan, shard_generators=shared.generators)
        record_applied(executor, migrations[:len(leading)])
    result.recorded = len(leading)
    del result.remaining[:len(leading)]
    unrecorded: list[Migration] = []  # no-ops here, recorded together before the next one runs
    try:
        for migration, here in zip(migrations[len(leading):], runs[len(leading):],
                                   strict=True):
            if stop.is_set():
                result.status = "stopped"
                break
            label = migration_label(migration)
            if here:
                _record(executor, unrecorded)
                if lock is not None:
                    lock.ensure_held()
                _apply(executor, migration, steps.operations[(migration.app_label,
                                                               migration.name)],
                       alias, policy, reporter, stop)
                result.applied.append(label)
            else:
                unrecorded.append(migration)
                result.recorded += 1
            result.remaining.remove(label)
    finally:
        _record(executor, unrecorded)
        if result.recorded:
            reporter.line(
                alias,
                f"Recorded {result.recorded} migration(s) of apps that live on other databases "
                "(no SQL here)",
            )
    # Like Django's migrate, post_migrate runs only when no migration failed: its handlers
    # (replica identity on a shard's tables, the shard registry on control) assume the schema
    # the applied migrations describe, which a failure leaves in doubt. The rerun runs them.
    reporter.status(alias, "post_migrate")
    check_replacements(executor)
    emit_post_migrate_signal(0, False, alias, stdout=io.StringIO(), apps=steps.post_apps,
                             plan=plan)
    if result.status == "stopped":
        result.error = (
            f"stopped before {result.remaining[0]} (another database failed and --fail-fast "
            "is on, or the run was interrupted)"
        )


def _record(executor: MigrationExecutor, migrations: list[Migration]) -> None:
    """Record no-op migrations as applied, in one transaction (and empty the list).

    Recorded one by one, each row was its own commit, and each commit waits for the disk:
    on a new shard two dozen of them, and with several shards on one disk those waits queue
    behind each other, the longest serial part of migrating many shards at once.
    """
    if not migrations:
        return
    with transaction.atomic(using=executor.connection.alias):
        record_applied(executor, migrations)
    migrations.clear()


def _apply(executor: MigrationExecutor, migration: Migration, states: OperationStates,
           alias: str, policy: ExecutionPolicy, reporter: Reporter,
           stop: threading.Event) -> None:
    label = migration_label(migration)
    first_try = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        suffix = f" (attempt {attempt})" if attempt > 1 else ""
        reporter.status(alias, f"applying {label}{suffix}")
        started = time.monotonic()
        watch: BlockerWatch | None = None
        try:
            watch = _blocker_watch(executor.connection, alias, policy)
            with watch:
                apply_migration(executor, migration, states)
        except Exception as exc:
            retryable = is_retryable(exc) and migration.atomic
            if not retryable or attempt > policy.retries or stop.is_set():
                raise MigrationFailed(
                    label,
                    explain_failure(exc, executor.connection, migration, policy, attempt,
                                    time.monotonic() - first_try,
                                    blockers=describe_blockers(watch.blockers if watch else [])),
                    attempts=attempt,
                ) from exc
            delay = policy.delay(attempt)
            reporter.line(
                alias,
                f"{label}: {error_summary(exc)} after {time.monotonic() - started:.1f}s; "
                f"rolled back, retry {attempt}/{policy.retries} in {delay:.1f}s",
            )
            reporter.status(alias, f"waiting {delay:.1f}s to retry {label}")
            if stop.wait(delay):
                raise MigrationFailed(
                    label, "stopped while waiting to retry (--fail-fast or interrupted)",
                    attempts=attempt,
                ) from exc
            # The failed attempt rolled back; the states it ran from are unchanged (shared_states).
            continue
        took = time.monotonic() - started
        retried = f", after {attempt - 1} retries" if attempt > 1 else ""
        reporter.line(alias, f"Applying {label}... OK ({took:.2f}s{retried})")
        return


def _blocker_watch(connection: BaseDatabaseWrapper, alias: str,
                   policy: ExecutionPolicy) -> BlockerWatch:
    """A watch on the sessions that block this migration's backend (named if it times out)."""
    connection.ensure_connection()
    backend_pid = connection.connection.info.backend_pid
    return BlockerWatch(get_shard_map().server(alias).direct_dsn, backend_pid,
                        after=min(0.5, policy.lock_timeout / 4))


def migrate_fleet(shards: Sequence[str], *, jobs: int, policy: ExecutionPolicy,
                  reporter: Reporter, fail_fast: bool = False,
                  lock: ClusterLock | None = None) -> FleetResult:
    """Control, then `shards` with up to `jobs` at a time. Never raises for a database's
    failure: each result says what happened; rerunning finishes what is left."""
    stop = threading.Event()
    fleet = FleetResult(results=[], jobs=jobs)
    started = time.monotonic()
    shared = RunShared()
    control = migrate_database(CONTROL_ALIAS, policy=policy, reporter=reporter, stop=stop,
                               lock=lock, shared=shared)
    fleet.control_seconds = time.monotonic() - started
    by_alias: dict[str, DatabaseResult] = {CONTROL_ALIAS: control}
    if not control.ok:
        for name in shards:
            by_alias[name] = DatabaseResult(
                alias=name, status="skipped",
                error="not started: the control database failed, and shards take their "
                "global id generator from its registry",
            )
    else:
        shared.generators = _shard_generators(shards, policy)
        by_alias.update(_migrate_shards(shards, jobs, policy, reporter, fail_fast, lock, stop,
                                        fleet, shared))
    fleet.results = [by_alias[alias] for alias in (CONTROL_ALIAS, *shards)]
    return fleet


def _shard_generators(shards: Sequence[str], policy: ExecutionPolicy) -> dict[str, int]:
    """Each shard's generator id, in one control transaction: otherwise each shard's
    pre_migrate reads its own on a control connection opened for just that."""
    try:
        with direct_connections(CONTROL_ALIAS, policy=policy):
            return register_shards(shards)
    except Exception:  # each shard then asks itself, and fails with its own message
        return {}


def _migrate_shards(shards: Sequence[str], jobs: int, policy: ExecutionPolicy,
                    reporter: Reporter, fail_fast: bool, lock: ClusterLock | None,
                    stop: threading.Event, fleet: FleetResult,
                    shared: RunShared) -> dict[str, DatabaseResult]:
    def run(alias: str) -> DatabaseResult:
        if stop.is_set():
            return DatabaseResult(
                alias=alias, status="skipped",
                error="not started: another database failed (--fail-fast) or interrupted",
            )
        return migrate_database(alias, policy=policy, reporter=reporter, stop=stop, lock=lock,
                                shared=shared)

    results: dict[str, DatabaseResult] = {}
    started, cpu_started = time.monotonic(), time.process_time()
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="migrate") as pool:
        futures = {pool.submit(run, alias): alias for alias in shards}
        pending = set(futures)
        while pending:
            try:
                for future in as_completed(pending):
                    pending.discard(future)
                    result = future.result()
                    results[result.alias] = result
                    if fail_fast and result.status == "failed":
                        stop.set()
            except KeyboardInterrupt:
                # Never abandon a migration half way: let running ones finish their current
                # migration (each is one transaction), start nothing new, then report.
                fleet.interrupted = True
                stop.set()
                for alias in {futures[f] for f in pending}:
                    reporter.line(alias, "interrupted: stopping after the current migration")
    fleet.shards_seconds = time.monotonic() - started
    fleet.shards_cpu_seconds = time.process_time() - cpu_started
    return results
