"""migrate_shards against a real fleet: control + 3 shards, each with a streaming replica.

The pytest process's Django settings belong to the session topology, so this module starts its
own topology, unmigrated, and runs the commands as a DBA does: `manage.py ...` subprocesses with
the topology's environment, asserting exit codes and output. The tests run in file order and
build on each other (fresh fleet -> partly failed -> finished -> a new migration held up by a
long transaction -> an unsafe migration), like the life of a real fleet.

Extra migrations for the comments app: see tests/dba_migrations.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from deploy.topology import PROJECT_DIR, LocalTopology
from migrations_tools.errors import ClusterLockHeld, ClusterLockLost
from migrations_tools.lock import LOCK_ID, LOCK_NAMESPACE, cluster_lock, current_holder
from migrations_tools.safety import ExecutionPolicy
from shards import pg
from tests.client import wait_until
from tests.commands import manage
from tests.conftest import make_topology
from tests.dba_migrations import (
    ALIASES,
    SHARDS,
    applied,
    dummy_insert,
    prefix,
    row,
    scalar,
    write_versions,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet() -> Iterator[LocalTopology]:
    topo = make_topology("shardsvc-dba-", shards=3, replicas=1, start_port=26400)
    try:
        topo.up(service=False, migrate=False)
        yield topo
    finally:
        topo.destroy()


@pytest.fixture(scope="module")
def comments_migrations() -> list[str]:
    """The comments app's migrations on disk, in order."""
    from django.db.migrations.loader import MigrationLoader

    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    leaf = next(key for key in graph.leaf_nodes() if key[0] == "comments")
    return [name for app, name in graph.forwards_plan(leaf) if app == "comments"]


@pytest.fixture(scope="module")
def versions(tmp_path_factory: pytest.TempPathFactory,
             comments_migrations: list[str]) -> dict[str, dict[str, str]]:
    """Environment overrides selecting comments migrations v2 or v3 (see dba_migrations)."""
    return write_versions(tmp_path_factory.mktemp("dba_migrations"), comments_migrations[-1])


# --- the fleet --------------------------------------------------------------------------------


def test_fresh_fleet_check_plan_and_lint(fleet: LocalTopology,
                                         comments_migrations: list[str]) -> None:
    check = manage(fleet, "migrate_shards", "--check")
    assert check.returncode == 1, check.stdout + check.stderr
    assert "Unapplied migrations:" in check.stdout
    assert "shards.0001_initial" in check.stdout.split(prefix("default"))[1].splitlines()[0]
    for shard in SHARDS:
        assert f"{prefix(shard)} comments.{comments_migrations[0]}" in check.stdout
    assert "4 of 4 database(s) not fully migrated: default, shard_0, shard_1, shard_2" in (
        check.stderr
    )

    plan = manage(fleet, "migrate_shards", "--plan", "--lint")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    assert "Plan (nothing is changed):" in plan.stdout
    for shard in SHARDS:
        assert f"{prefix(shard)} {len(comments_migrations)} to apply" in plan.stdout
        for name in comments_migrations:
            assert f"{prefix(shard)}   comments.{name}" in plan.stdout
    assert f"{prefix('default')}   shards.0001_initial" in plan.stdout
    assert "replica" not in plan.stdout  # replicas are never migrated
    # Indexes of tables created in the same run are not flagged: the tables are new and empty.
    assert "Lint: no operation unsafe on large live tables" in plan.stdout
    # --plan and --check change nothing.
    for alias in ALIASES:
        assert scalar(fleet, alias, "SELECT to_regclass('django_migrations')") is None


def test_failure_on_one_shard_leaves_the_others_migrated_and_a_rerun_finishes(
        fleet: LocalTopology, comments_migrations: list[str]) -> None:
    first = f"comments.{comments_migrations[0]}"
    with fleet.admin_connect(fleet.node("shard_1")) as conn:
        conn.execute("CREATE TABLE comments_comment (conflict integer)")

    run = manage(fleet, "migrate_shards")
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert f"{prefix('shard_0')} Applying {first}... OK" in out
    assert f"{prefix('shard_2')} Applying {first}... OK" in out
    assert f'{prefix("shard_1")} FAILED: {first}: relation "comments_comment" already exists' in (
        out
    )
    assert re.search(rf'FAILED \(\d+ left\): {re.escape(first)}: relation "comments_comment" '
                     "already exists", row(out, "shard_1"))
    for alias in ("default", "shard_0", "shard_2"):
        assert row(out, alias).endswith(" ok"), row(out, alias)
    assert "1 of 4 database(s) not fully migrated: shard_1" in run.stderr
    assert "already exists" in run.stderr
    # The others are migrated for real, and control registered every shard.
    for shard in ("shard_0", "shard_2"):
        assert applied(fleet, shard, "comments", comments_migrations[-1])
        assert scalar(fleet, shard, "SELECT to_regclass('comments_thread') IS NOT NULL")
    assert not applied(fleet, "shard_1", "comments", comments_migrations[0])
    assert scalar(fleet, "default", "SELECT count(*) FROM shards_shard") == 3

    matrix = manage(fleet, "shard_showmigrations", "comments")
    assert matrix.returncode == 0, matrix.stdout + matrix.stderr
    drift_line = next(line for line in matrix.stdout.splitlines() if line.startswith(first))
    assert re.match(rf"{re.escape(first)}\s+-\s+X\s+\.\s+X\s+DRIFT: unapplied on shard_1$",
                    drift_line), drift_line

    check = manage(fleet, "migrate_shards", "--check")
    assert check.returncode == 1
    assert f"{prefix('shard_1')} {first}" in check.stdout
    assert prefix("shard_0") not in check.stdout
    assert "1 of 4 database(s) not fully migrated: shard_1" in check.stderr

    with fleet.admin_connect(fleet.node("shard_1")) as conn:
        conn.execute("DROP TABLE comments_comment")
    rerun = manage(fleet, "migrate_shards")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{prefix('shard_1')} Applying {first}... OK" in rerun.stdout
    assert row(rerun.stdout, "shard_0").endswith("ok (up to date)")
    assert re.search(r"^shard_1\s+\d+ .*\bok$", row(rerun.stdout, "shard_1"))

    check = manage(fleet, "migrate_shards", "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "All 4 database(s) are fully migrated." in check.stdout
    matrix = manage(fleet, "shard_showmigrations")
    assert "No drift" in matrix.stdout and "DRIFT" not in matrix.stdout


def test_the_cluster_lock_makes_a_second_run_fail_fast_naming_the_holder(
        fleet: LocalTopology) -> None:
    dsn = fleet.node("default").direct_dsn
    assert current_holder(dsn=dsn) is None
    with cluster_lock("move_tenant acme", dsn=dsn) as lock:
        holder = current_holder(dsn=dsn)
        assert holder is not None
        assert holder.purpose == "move_tenant acme"
        assert holder.backend_pid == lock.holder.backend_pid
        assert f"pid {os.getpid()}" in holder.who

        started = time.monotonic()
        run = manage(fleet, "migrate_shards", timeout=60)
        assert run.returncode == 1
        assert "cannot take the cluster lock for 'migrate_shards': it is held by" in run.stderr
        assert f"pid {os.getpid()} (move_tenant acme) since " in run.stderr
        assert "Applying" not in run.stdout
        assert time.monotonic() - started < 30  # failed at once, did not wait for the lock

        with pytest.raises(ClusterLockHeld) as info, cluster_lock("rebalance", dsn=dsn):
            pass
        assert info.value.holder is not None and info.value.holder.purpose == "move_tenant acme"
    assert current_holder(dsn=dsn) is None

    # Between taking the lock and recording its row, the holder is named by its session.
    with pg.connect(dsn, application_name="shardsvc lock: rebalance") as bare:
        bare.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID])
        holder = current_holder(dsn=dsn)
        assert holder is not None and holder.purpose == "rebalance"
    assert current_holder(dsn=dsn) is None


def test_a_lock_whose_session_is_lost_is_taken_again_unless_someone_else_holds_it(
        fleet: LocalTopology) -> None:
    # The control primary restarting or failing over ends the lock's session as a terminated
    # backend does: the next check takes the lock again on the control primary that answers.
    dsn = fleet.node("default").direct_dsn
    with cluster_lock("move_tenant acme", dsn=dsn) as lock, pg.connect(dsn) as admin:
        first = lock.holder.backend_pid
        admin.execute("SELECT pg_terminate_backend(%s)", [first])
        lock.ensure_held()
        assert lock.holder.backend_pid != first
        assert len(lock.retakes) == 1 and "lost" in lock.retakes[0], lock.retakes
        holder = current_holder(dsn=dsn)
        assert holder is not None and holder.backend_pid == lock.holder.backend_pid
        assert holder.purpose == "move_tenant acme"
        lock.ensure_held()  # held: nothing more to do
        assert len(lock.retakes) == 1

        # Taken by another session in the gap: nothing more may start.
        admin.execute("SELECT pg_terminate_backend(%s)", [lock.holder.backend_pid])
        with pg.connect(dsn, application_name="shardsvc lock: rebalance") as other:
            other.execute("SELECT pg_advisory_lock(%s, %s)", [LOCK_NAMESPACE, LOCK_ID])
            with pytest.raises(ClusterLockLost) as lost:
                lock.ensure_held()
            assert "rebalance" in str(lost.value) and "holds it now" in str(lost.value)
    assert current_holder(dsn=dsn) is None


def test_a_long_transaction_delays_only_its_shard_and_never_blocks_the_app(
        fleet: LocalTopology, versions: dict[str, dict[str, str]]) -> None:
    policy = ExecutionPolicy(lock_timeout=1.0, retries=2, retry_delay=0.5)
    with fleet.admin_connect(fleet.node("shard_0")) as admin:
        sql, values = dummy_insert(admin, "comments_thread", {})
        thread_id = admin.execute(sql, values).fetchone()[0]
        comment_insert = dummy_insert(admin, "comments_comment",
                                       {"thread_id": thread_id, "parent_id": None})

    # The long transaction: a session that read the table and stays open (ACCESS SHARE lock).
    blocker = fleet.admin_connect(fleet.node("shard_0"))
    blocker.execute("SET application_name = 'dba-console'")
    blocker.autocommit = False
    blocker.execute("SELECT count(*) FROM comments_comment").fetchone()

    # The application's traffic on that very table, through PgBouncer as the app does.
    timings: list[tuple[str, float, str | None]] = []
    stop = threading.Event()

    def traffic() -> None:
        with pg.connect(fleet.pooled_dsn("shard_0")) as conn:
            while not stop.is_set():
                for kind, statement, params in (
                    ("read", "SELECT count(*) FROM comments_comment", []),
                    ("write", *comment_insert),
                ):
                    started = time.monotonic()
                    error = None
                    try:
                        with conn.transaction():
                            # Guard: a query stuck behind the ALTER must fail, not hang the test.
                            conn.execute("SET LOCAL statement_timeout = '10s'")
                            conn.execute(statement, params)
                    except Exception as exc:
                        error = str(exc)
                    timings.append((kind, time.monotonic() - started, error))
                stop.wait(0.05)

    worker = threading.Thread(target=traffic, daemon=True)
    args = ["manage.py", "migrate_shards", "--lock-timeout", "1s", "--retries", "2",
            "--retry-delay", "0.5s"]
    started = time.monotonic()
    migration = subprocess.Popen(
        [sys.executable, *args], cwd=PROJECT_DIR, env=fleet.service_env(**versions["v2"]),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    worker.start()
    try:
        # While shard_0 waits and retries, a second run fails at once naming the first.
        dsn = fleet.node("default").direct_dsn
        holder = wait_until(lambda: current_holder(dsn=dsn), timeout=30, interval=0.05,
                            what="the first run to take the cluster lock")
        assert holder.purpose == "migrate_shards"
        second = manage(fleet, "migrate_shards", **versions["v2"], timeout=60)
        assert migration.poll() is None, "the first run should still be retrying shard_0"
        assert second.returncode == 1
        assert "cannot take the cluster lock for 'migrate_shards': it is held by" in second.stderr
        assert f"pid {migration.pid} (migrate_shards) since " in second.stderr

        out, err = migration.communicate(timeout=120)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        worker.join(timeout=30)
        blocker.rollback()
        blocker.close()
        if migration.poll() is None:
            migration.kill()

    assert migration.returncode == 1, out + err
    label = "comments.9001_dba_columns"
    assert f"{prefix('shard_0')} {label}: canceling statement due to lock timeout after" in out
    assert "rolled back, retry 1/2 in" in out and "rolled back, retry 2/2 in" in out
    shard_0 = row(out, "shard_0")
    assert "FAILED" in shard_0 and "lock timeout" in shard_0 and "3 attempt(s)" in shard_0
    assert "oldest open transactions: pid" in shard_0
    # The session that blocked the lock wait, as PostgreSQL saw it (pg_blocking_pids).
    assert re.search(r"blocked by pid \d+ \(application_name 'dba-console', user \w+, "
                     r"idle in transaction", shard_0), shard_0
    for shard in ("shard_1", "shard_2"):
        assert f"{prefix(shard)} Applying {label}... OK" in out
        assert row(out, shard).endswith(" ok")
        assert applied(fleet, shard, "comments", "9001_dba_columns")
    assert not applied(fleet, "shard_0", "comments", "9001_dba_columns")
    assert "1 of 4 database(s) not fully migrated: shard_0" in err

    # Within the configured bounds: three lock waits, two pauses, then it gave up.
    took = float(re.search(r"([\d.]+)s\s+FAILED", shard_0).group(1))
    assert 3 * policy.lock_timeout <= took <= policy.worst_case_lock_wait() + 2.0
    assert elapsed < policy.worst_case_lock_wait() + 30  # process start-up included

    # Other sessions' reads and writes kept going: none failed, none queued behind the ALTER
    # for longer than lock_timeout.
    assert [t for t in timings if t[2] is not None] == []
    assert {kind for kind, _, _ in timings} == {"read", "write"}
    assert len(timings) >= 20
    slowest = max(duration for _, duration, _ in timings)
    assert slowest < policy.lock_timeout + 1.5, slowest

    # With the transaction gone, finishing shard_0 alone works.
    rerun = manage(fleet, "migrate_shards", "--shard", "shard_0", **versions["v2"])
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{prefix('shard_0', ['default', 'shard_0'])} Applying {label}... OK" in rerun.stdout
    check = manage(fleet, "migrate_shards", "--check", **versions["v2"])
    assert check.returncode == 0, check.stdout + check.stderr


def test_lint_flags_unsafe_operations_on_existing_tables(
        fleet: LocalTopology, versions: dict[str, dict[str, str]]) -> None:
    plan = manage(fleet, "migrate_shards", "--plan", "--lint", **versions["v3"])
    assert plan.returncode == 1, plan.stdout + plan.stderr
    out = plan.stdout
    for shard in SHARDS:
        assert f"{prefix(shard)} 1 to apply" in out
        assert f"{prefix(shard)}   comments.9002_dba_unsafe" in out
    lint = out.split("Lint:", 1)[1]
    assert "3 operation(s) unsafe on large live tables" in lint
    pending = "(pending on shard_0, shard_1, shard_2)"
    assert "index-not-concurrent comments.9002_dba_unsafe: Create index comments_dba_note" in (
        lint
    )
    assert "AddIndexConcurrently" in lint
    assert re.search(rf"column-rewrite comments\.9002_dba_unsafe: Alter field dba_rank .*"
                     rf"{re.escape(pending)}", lint)
    assert "from integer to bigint rewrites comments_comment" in lint
    assert re.search(r"not-null-without-default comments\.9002_dba_unsafe: Add field dba_flag",
                     lint)
    # Safe ones are not flagged: a nullable column, widening varchar to text.
    assert "dba_ok" not in lint and "dba_note from" not in lint
    assert "lint flagged 3 operation(s)" in plan.stderr

    refused = manage(fleet, "migrate_shards", "--lint", **versions["v3"])
    assert refused.returncode == 1
    assert "Nothing was migrated" in refused.stderr
    assert not applied(fleet, "shard_0", "comments", "9002_dba_unsafe")

    check = manage(fleet, "migrate_shards", "--check", **versions["v3"])
    assert check.returncode == 1
    for shard in SHARDS:
        assert f"{prefix(shard)} comments.9002_dba_unsafe" in check.stdout


def test_migrating_an_up_to_date_shard_takes_no_lock_its_writes_hold(admin, django_db) -> None:
    """The fence install after migrations leaves what is in place alone: on a shard whose
    writes hold their tables, it neither waits nor deadlocks (its ALTER TABLE and CREATE
    TRIGGER used to lock the fence table, then the sharded tables, in the migration's one
    transaction: a write that had locked a table and then read the fence table deadlocked)."""
    from django.db import connections, transaction

    from shards import preparation

    writer = admin("shard_0")
    writer.autocommit = False
    # As a write holds its tables while its fence trigger runs: RowExclusiveLock on each.
    for model in preparation.sharded_models():
        writer.execute(f"LOCK TABLE {model._meta.db_table} IN ROW EXCLUSIVE MODE")
    writer.execute("SELECT count(*) FROM shardsvc_fence")
    try:
        with transaction.atomic(using="shard_0"):
            with connections["shard_0"].cursor() as cursor:
                # Any lock the write's locks conflict with fails at once instead of waiting.
                cursor.execute("SET LOCAL lock_timeout = '100ms'")
            preparation.after_migrate(sender=None, using="shard_0")
    finally:
        writer.rollback()
