"""Moves and migrations across a real failover: Patroni, etcd, `kill -9` and `switchover`.

One highly available topology for the module (control + 2 shards, one replica each, migrated),
started by the project's own manager; the commands run as an operator runs them (`manage.py` in
a subprocess). The work is held at the step the fault should hit by a real blocker (a lock on the
target's table during the copy, a transaction older than the fence during the cutover, a
transaction holding the table a migration alters), the shard fails over, the blocker goes, and
the work must finish with nothing left on any member.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.processes import TopologyError
from deploy.topology import PROJECT_DIR, LocalTopology
from tests.commands import manage
from tests.conftest import make_topology
from tests.dba_migrations import applied, prefix, row, write_versions

pytestmark = pytest.mark.slow

TABLES = ("comments_thread", "comments_comment", "comments_vote")
SITES = ("mf-1", "mf-2")


@pytest.fixture(scope="module")
def ha() -> Iterator[LocalTopology]:
    topo = make_topology("shardsvc-mf-", shards=2, replicas=1, ha=True, start_port=27000)
    try:
        topo.up(service=False, migrate=True)
        seeded = manage(topo, "seed_demo", "--sites", "2", "--comments", "4000",
                        "--prefix", "mf")
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr[-2000:]
        yield topo
    finally:
        topo.destroy()


def wait_for(condition, timeout: float, what: str,
             proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.1)
    output = ""
    if proc is not None:
        proc.kill()
        out, err = proc.communicate()
        output = f"; the command said:\n{out}{err[-3000:]}"
    raise AssertionError(f"not within {timeout} s: {what}{output}")


def new_leader(topo: LocalTopology, cluster: str, old) -> bool:
    try:
        return topo.leader(cluster) != old
    except TopologyError:  # none leads for a moment, between the old one and the next
        return False


def waiting_on_lock(topo: LocalTopology, cluster: str, application: str) -> bool:
    # A session of its own: pg_stat_activity is read once per transaction.
    return on_leader(topo, cluster, "SELECT count(*) FROM pg_stat_activity "
                     "WHERE wait_event_type = 'Lock' AND application_name LIKE %s",
                     [application])[0][0] > 0


def on_leader(topo: LocalTopology, cluster: str, query: str, params: list | None = None):
    with topo.admin_connect(topo.leader(cluster)) as conn:
        return conn.execute(query, params or []).fetchall()


def tenant(topo: LocalTopology, slug: str) -> tuple[int, str]:
    [(tenant_id, shard)] = on_leader(topo, "default",
                                     "SELECT id, shard FROM shards_tenant WHERE slug = %s", [slug])
    return tenant_id, shard


def rows(topo: LocalTopology, cluster: str, tenant_id: int) -> int:
    return sum(on_leader(topo, cluster, f"SELECT count(*) FROM {t} WHERE tenant_id = %s",
                         [tenant_id])[0][0] for t in TABLES)


def other(shard: str) -> str:
    return "shard_1" if shard == "shard_0" else "shard_0"


def start_move(topo: LocalTopology, slug: str, target: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "manage.py", "move_tenant", slug, target, "--grace", "0", *args],
        cwd=PROJECT_DIR, env=topo.service_env(), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def leftovers(topo: LocalTopology) -> dict[str, list[str]]:
    """Logical slots, publications, subscriptions and fences on EVERY member (a slot left on a
    failed leader that rejoined as a standby would hold WAL there too)."""
    for cluster in topo.layout.cluster_names:
        topo.wait_cluster_streaming(cluster, timeout=90)
    found: dict[str, list[str]] = {}
    for node in topo.layout.nodes():
        with topo.admin_connect(node) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT 'slot ' || slot_name FROM pg_replication_slots "
                "WHERE slot_type = 'logical' "
                "UNION ALL SELECT 'publication ' || pubname FROM pg_publication "
                "UNION ALL SELECT 'subscription ' || subname FROM pg_subscription").fetchall()]
            if node.cluster != "default":  # control has no fence table
                names += [f"fence {r[0]}" for r in conn.execute(
                    "SELECT tenant_id FROM shardsvc_fence").fetchall()]
        if names:
            found[node.alias] = names
    return found


def job_of(topo: LocalTopology, tenant_id: int) -> tuple[str, bool | None, dict]:
    [(state, verified, report)] = on_leader(
        topo, "default", "SELECT state, verified, report FROM shards_movejob "
        "WHERE tenant_id = %s ORDER BY id DESC LIMIT 1", [tenant_id])
    return state, verified, report


def assert_moved(topo: LocalTopology, slug: str, tenant_id: int, source: str, target: str,
                 count: int) -> None:
    state, verified, report = job_of(topo, tenant_id)
    assert (state, verified) == ("done", True), (state, verified, report.get("verification"))
    assert len(report["failovers"]) == 1, report.get("failovers")
    assert tenant(topo, slug)[1] == target
    assert rows(topo, target, tenant_id) == count
    assert rows(topo, source, tenant_id) == 0
    assert leftovers(topo) == {}
    print(f"\n{slug} {source} -> {target}: {count} rows, move {report['total_seconds']} s "
          f"with one failover ({report['failovers'][0]['state']}: "
          f"{report['failovers'][0]['changes'][0]})")
    status = manage(topo, "shard_status")
    assert "leaked replication objects: none" in status.stdout, status.stdout + status.stderr


def test_source_killed_mid_copy_restarts_the_copy_on_the_new_leader(ha) -> None:
    tenant_id, source = tenant(ha, SITES[0])
    target = other(source)
    count = rows(ha, source, tenant_id)
    assert count > 0
    old = ha.leader(source)
    with ha.admin_connect(ha.leader(target)) as blocker, blocker.transaction():
        # Reads pass, the copy's COPY FROM waits: the move is held in `copying`, its slot made.
        blocker.execute("LOCK TABLE comments_comment IN SHARE MODE")
        proc = start_move(ha, SITES[0], target)
        wait_for(lambda: waiting_on_lock(ha, target, "shardsvc move % copy"),
                 60, "the move's copy waiting on the target", proc)
        assert on_leader(ha, source, "SELECT count(*) FROM pg_replication_slots "
                         "WHERE slot_type = 'logical'")[0][0] == 1
        ha.kill_postmaster(old)
        wait_for(lambda: new_leader(ha, source, old), 30, f"a new leader of {source}")
    code, out, err = finish(proc)
    assert code == 0, out + err[-3000:]
    assert f"{source} (the source) failed over" in out, out
    assert "restarting the copy on the new leader" in out, out
    assert_moved(ha, SITES[0], tenant_id, source, target, count)


def test_target_switched_over_while_fenced_restarts_the_copy_and_lifts_the_fence(ha) -> None:
    tenant_id, source = tenant(ha, SITES[1])
    target = other(source)
    count = rows(ha, source, tenant_id)
    with ha.admin_connect(ha.leader(source)) as holder, holder.transaction():
        # A transaction older than the fence: the cutover waits for it, fenced.
        holder.execute("SELECT 1")
        proc = start_move(ha, SITES[1], target, "--cutover-timeout", "25")
        wait_for(lambda: on_leader(ha, source, "SELECT count(*) FROM shardsvc_fence "
                                   "WHERE tenant_id = %s", [tenant_id])[0][0] == 1,
                 120, "the cutover's fence on the source", proc)
        switched = manage(ha, "switchover", target)
        assert switched.returncode == 0, switched.stdout + switched.stderr
    code, out, err = finish(proc)
    assert code == 0, out + err[-3000:]
    assert f"{target} (the target) failed over" in out, out
    assert "restarting the copy on the new leader" in out, out
    assert_moved(ha, SITES[1], tenant_id, source, target, count)


def test_source_killed_after_the_flip_goes_on_and_cleans_up_on_the_new_leader(ha) -> None:
    tenant_id, source = tenant(ha, SITES[0])  # moved by the first test: back again
    target = other(source)
    count = rows(ha, source, tenant_id)
    old = ha.leader(source)
    # The grace period keeps the fenced source rows after the flip, replication dropped.
    proc = start_move(ha, SITES[0], target, "--grace", "20")
    wait_for(lambda: job_of(ha, tenant_id)[0] == "cleanup", 120, "the move's cleanup", proc)
    ha.kill_postmaster(old)
    code, out, err = finish(proc)
    assert code == 0, out + err[-3000:]
    assert f"{source} (the source) failed over" in out, out
    assert "the target serves the tenant already (cleanup)" in out, out
    assert "restarting the copy" not in out, out
    assert_moved(ha, SITES[0], tenant_id, source, target, count)


def test_control_switched_over_mid_move_carries_on_with_the_lock_taken_again(ha) -> None:
    # The job, the directory and the cluster lock live on control: its switchover ends the
    # lock's session (and any direct session to it), and the move carries on on the new
    # control leader once the lock is taken again.
    tenant_id, source = tenant(ha, SITES[1])
    target = other(source)
    count = rows(ha, source, tenant_id)
    old = ha.leader("default")
    with ha.admin_connect(ha.leader(target)) as blocker, blocker.transaction():
        blocker.execute("LOCK TABLE comments_comment IN SHARE MODE")  # holds the copy
        proc = start_move(ha, SITES[1], target)
        wait_for(lambda: waiting_on_lock(ha, target, "shardsvc move % copy"),
                 60, "the move's copy waiting on the target", proc)
        switched = manage(ha, "switchover", "default")
        assert switched.returncode == 0, switched.stdout + switched.stderr
    assert ha.leader("default") != old
    code, out, err = finish(proc)
    assert code == 0, out + err[-3000:]
    assert "cluster lock taken again after its session was lost" in err, err[-3000:]
    state, verified, report = job_of(ha, tenant_id)
    assert (state, verified) == ("done", True), (state, verified, report.get("verification"))
    assert "failovers" not in report or report["failovers"] == [], report.get("failovers")
    assert tenant(ha, SITES[1])[1] == target
    assert rows(ha, target, tenant_id) == count and rows(ha, source, tenant_id) == 0
    assert leftovers(ha) == {}


def test_migrate_shards_carries_on_on_the_new_leader_of_a_shard_killed_mid_run(
        ha, tmp_path: Path) -> None:
    migrations = sorted((PROJECT_DIR / "comments" / "migrations").glob("[0-9]*.py"))
    env = write_versions(tmp_path, migrations[-1].stem)["v2"]
    victim = "shard_0"
    old = ha.leader(victim)
    aliases = ["default", "shard_0", "shard_1"]
    holder = ha.admin_connect(old)
    try:
        # Holds the table the migration alters: it waits and retries on lock_timeout.
        holder.execute("BEGIN")
        holder.execute("SELECT 1 FROM comments_comment LIMIT 1")
        proc = subprocess.Popen(
            [sys.executable, "manage.py", "migrate_shards", "--lock-timeout", "1s",
             "--retries", "60", "--retry-delay", "0.5s"],
            cwd=PROJECT_DIR, env=ha.service_env(**env), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        wait_for(lambda: waiting_on_lock(ha, victim, "shardsvc migrate_shards"),
                 90, "the migration waiting on the held table", proc)
        ha.kill_postmaster(old)
    finally:
        holder.close()  # its server is gone: nothing to commit
    killed_at = time.monotonic()
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err[-3000:]
    print(f"\nmigrate_shards finished {time.monotonic() - killed_at:.1f} s after the kill:\n"
          + "\n".join(line for line in out.splitlines() if victim in line))
    assert f"{prefix(victim, aliases)} lost its primary" in out, out
    assert f"{prefix(victim, aliases)} reconnected to the new leader" in out, out
    assert row(out, victim).endswith(" ok") and row(out, "shard_1").endswith(" ok"), out
    assert ha.leader(victim) != old
    for shard in ("shard_0", "shard_1"):
        assert applied(ha, ha.leader(shard).alias, "comments", "9001_dba_columns")
    check = manage(ha, "migrate_shards", "--check", **env)
    assert check.returncode == 0, check.stdout + check.stderr
