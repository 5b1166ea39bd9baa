"""The highly available topology: real Patroni, real etcd, real kills.

One topology for the module (control + one shard, one replica each, under Patroni with a
3-member etcd), started by the project's own manager. Writers go through PgBouncer's cluster
entry, which the leader follower re-points; what was acknowledged is compared with what the new
leader holds. The switchover test also runs the monitoring stack, whose recorded roles and
failover alert must follow the new leader. Timings are printed (the benchmark's business),
never asserted.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from deploy.leader_follower import FENCE_CHECK_SECONDS
from deploy.topology import LocalTopology
from migrations_tools import patroni_status
from migrations_tools.switchover import SwitchoverError, choose, switchover
from migrations_tools.switchover_fence import lift_if_stale
from shards import patroni, pg
from shards.topology import load_shard_map
from tests import prometheus_api
from tests.conftest import make_topology
from tests.ha_writes import CREATE_SQL, GRANT_SQL, Writer, longest_gap

pytestmark = pytest.mark.slow

PROJECT_DIR = Path(__file__).resolve().parent.parent
CLUSTER = "shard_0"


@pytest.fixture(scope="module")
def ha() -> Iterator[LocalTopology]:
    topo = make_topology("shardsvc-ha-", shards=1, replicas=1, ha=True)
    try:
        topo.up(service=False, migrate=False)
        with pg.connect(leader_dsn(topo)) as conn:
            conn.execute(CREATE_SQL)
            conn.execute(GRANT_SQL)
        yield topo
    finally:
        topo.destroy()


@pytest.fixture
def prometheus(ha: LocalTopology) -> Iterator[str]:
    """Prometheus and its exporters (scrapes every second) for one test, then stopped."""
    with prometheus_api.monitoring_started(ha) as url:
        yield url


def recorded_roles(url: str, cluster: str = CLUSTER) -> dict[str, set[str]]:
    """role -> aliases, as the recording rule cluster_role:pg_server:info has them now."""
    roles: dict[str, set[str]] = {}
    for sample in prometheus_api.query(url, f'cluster_role:pg_server:info{{cluster="{cluster}"}}'):
        roles.setdefault(sample["metric"]["role"], set()).add(sample["metric"]["alias"])
    return roles


def first_sample(url: str, selector: str) -> float:
    """The time (epoch seconds) of a series' first sample in the last 10 minutes."""
    [series] = prometheus_api.query(url, f"{selector}[10m]")
    return float(series["values"][0][0])


def leader_dsn(topo: LocalTopology, cluster: str = CLUSTER) -> str:
    return f"host=127.0.0.1 port={topo.leader(cluster).port} user=postgres dbname=app"


def pooled(topo: LocalTopology, entry: str = CLUSTER) -> str:
    return f"host=127.0.0.1 port={topo.layout.pgbouncer_port} user=app dbname={entry}"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def members(topo: LocalTopology, cluster: str = CLUSTER) -> dict[str, dict]:
    return {m["name"]: m for m in patroni.cluster_members(topo.member_urls(cluster))}


def manage(topo: LocalTopology, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(PROJECT_DIR / "manage.py"), *args],
                          cwd=PROJECT_DIR, env={**topo.service_env(), **env},
                          capture_output=True, text=True, timeout=120, check=False)


def test_every_cluster_has_a_leader_and_a_synchronous_standby(ha: LocalTopology) -> None:
    for cluster in ha.layout.cluster_names:
        roles = sorted(m["role"] for m in members(ha, cluster).values())
        assert roles == ["leader", "sync_standby"], (cluster, roles)
    # The topology file's direct DSN (multi-host, read-write) reaches the leader; PgBouncer's
    # cluster entry too, and a member's own entry reaches that member.
    shard = load_shard_map(ha.layout.topology_file).shard(CLUSTER)
    leader = ha.leader(CLUSTER)
    for dsn in (shard.primary.direct_dsn, pooled(ha)):
        with pg.connect(dsn) as conn:
            assert pg.fetch_value(conn, "SELECT inet_server_port()") == leader.port
            assert pg.fetch_value(conn, "SELECT pg_is_in_recovery()") is False
    replica = next(n for n in ha.layout.members(CLUSTER) if n != leader)
    with pg.connect(pooled(ha, replica.alias)) as conn:
        assert pg.fetch_value(conn, "SELECT pg_is_in_recovery()") is True


def test_losing_one_etcd_member_changes_nothing(ha: LocalTopology) -> None:
    leader = ha.leader(CLUSTER)
    assert ha.stop_etcd_member(2)
    try:
        with Writer(pooled(ha), start_id=1_000_000) as writer:
            # Several Patroni loops (1 s each) with two of three members: quorum holds.
            time.sleep(3)
        assert writer.errors == []
        assert len(writer.acked) > 10
        assert ha.leader(CLUSTER) == leader
        assert all(m["state"] in ("running", "streaming") for m in members(ha).values())
    finally:
        ha.start_etcd_member(2)
        ha.wait_etcd_healthy(timeout=30)


def test_killed_primary_fails_over_with_no_acknowledged_write_lost(ha: LocalTopology) -> None:
    old = ha.leader(CLUSTER)
    with Writer(pooled(ha), start_id=1) as writer:
        wait_for(lambda: len(writer.acked) > 20, 10, "writes before the kill")
        killed_at = time.monotonic()
        ha.kill_postmaster(old)
        wait_for(lambda: len(writer.sent_after(killed_at)) > 0, 30,
                 "a write sent after the kill acknowledged through PgBouncer")
        back_at = min(writer.sent_after(killed_at))
        wait_for(lambda: len(writer.sent_after(back_at)) > 20, 10, "writes after failover")
    # A write in flight may wait in PgBouncer's queue and succeed on the new leader, and the
    # killed postmaster's backends commit for a moment after it: what a client sees is the
    # longest gap between acknowledgements.
    pause = longest_gap(writer, killed_at)
    new = ha.leader(CLUSTER)
    assert new != old
    with pg.connect(leader_dsn(ha)) as conn:
        present = {row[0] for row in conn.execute("SELECT id FROM ha_writes WHERE id < 1000000")}
    acked = writer.ids
    lost = sorted(acked - present)
    print(f"\nkill -9 of {old.alias}'s postmaster: writes through PgBouncer paused "
          f"{pause:.2f} s; acked {len(acked)}, present {len(present)}, "
          f"lost {len(lost)}, failed writes {len(writer.errors)}")
    assert lost == []
    assert ha.pgbouncer_leaders()[CLUSTER] == new.alias

    # The old leader rejoins as a standby (pg_rewind), and its role change is visible both in
    # Patroni and on the server itself through its own PgBouncer entry.
    ha.wait_cluster_streaming(CLUSTER, timeout=60)
    assert members(ha)[old.alias]["role"] in ("replica", "sync_standby")
    with pg.connect(pooled(ha, old.alias)) as conn:
        assert pg.fetch_value(conn, "SELECT pg_is_in_recovery()") is True
    history = patroni.history(ha.member_urls(CLUSTER))
    assert history and history[-1][4] == new.alias

    # shard_status's Patroni tables, from the topology file's REST URLs.
    roles = patroni_status.managed(load_shard_map(ha.layout.topology_file))
    rows = {(r[0], r[1]): r for r in patroni_status.member_rows(roles)}
    assert rows[(CLUSTER, new.alias)][2] == "leader"
    assert rows[(CLUSTER, old.alias)][2:4] in (["sync_standby", "streaming"],
                                               ["replica", "streaming"])
    assert [CLUSTER, new.alias] == [patroni_status.history_rows(roles)[-1][i] for i in (0, 4)]


def test_switchover_command_hands_over_and_monitoring_follows(ha: LocalTopology,
                                                              prometheus: str) -> None:
    old = ha.leader(CLUSTER)
    target = next(n for n in ha.layout.members(CLUSTER) if n != old)
    # Prometheus records the roles the members have now (after the kill above, the member that
    # started as a replica leads), and a fresh Prometheus has seen no failover.
    prometheus_api.wait_for(
        lambda: recorded_roles(prometheus) == {"primary": {old.alias}, "replica": {target.alias}},
        timeout=60, what=f"{old.alias} recorded as {CLUSTER}'s primary",
        detail=lambda: recorded_roles(prometheus))
    # Every member's Patroni scraped (the first scrapes of a fresh Prometheus come at
    # different moments per target).
    prometheus_api.wait_for(
        lambda: len(prometheus_api.query(prometheus, 'up{job="patroni"} == 1')) == len(
            ha.layout.nodes()),
        timeout=60, what="every Patroni member scraped",
        detail=lambda: prometheus_api.query(prometheus, 'up{job="patroni"}'))
    assert not prometheus_api.firing(prometheus, "PostgresFailover")

    done = manage(ha, "switchover", CLUSTER, "--to", target.alias)
    assert done.returncode == 0, done.stdout + done.stderr
    print("\n" + done.stdout.strip())
    assert f"{CLUSTER}: {old.alias} -> {target.alias}; writes through PgBouncer paused" \
        in done.stdout
    assert ha.leader(CLUSTER) == target
    # The command returned once a write through PgBouncer succeeded: the entry is re-pointed.
    with pg.connect(pooled(ha)) as conn:
        assert pg.fetch_value(conn, "SELECT inet_server_port()") == target.port

    # The recorded roles name the new primary (the old leader has none while it restarts),
    # and the failover alert names it too.
    prometheus_api.wait_for(
        lambda: recorded_roles(prometheus).get("primary") == {target.alias},
        timeout=60, what=f"{target.alias} recorded as {CLUSTER}'s primary",
        detail=lambda: recorded_roles(prometheus))
    prometheus_api.wait_for(
        lambda: prometheus_api.firing(prometheus, "PostgresFailover", alias=target.alias),
        timeout=60, what="PostgresFailover firing")
    alerts = prometheus_api.firing(prometheus, "PostgresFailover", cluster=CLUSTER)
    assert [(a["labels"]["alias"], a["labels"]["role"]) for a in alerts] == [
        (target.alias, "primary")]
    assert alerts[0]["annotations"]["summary"] == \
        f"failover on {CLUSTER}: {target.alias} is its primary now"
    ha.wait_cluster_streaming(CLUSTER, timeout=60)
    prometheus_api.wait_for(
        lambda: recorded_roles(prometheus) == {"primary": {target.alias},
                                               "replica": {old.alias}},
        timeout=60, what=f"{old.alias} recorded as a replica once it streams",
        detail=lambda: recorded_roles(prometheus))
    # The per-role series joined on the live roles have both roles of the cluster again (the
    # rejoined member's rate needs two scrapes).
    prometheus_api.wait_for(
        lambda: {s["metric"]["role"] for s in prometheus_api.query(
            prometheus, f'cluster_role:pg_xact_rollback:ratio_rate1m{{cluster="{CLUSTER}"}}')}
        == {"primary", "replica"}, timeout=60, what="the rollback ratio of both roles")
    # How long after the promotion (its entry in Patroni's history) each first appeared.
    promoted = datetime.fromisoformat(patroni.history(ha.member_urls(CLUSTER))[-1][3])
    recorded = first_sample(prometheus, f'cluster_role:pg_server:info{{alias="{target.alias}",'
                                        f'role="primary"}}') - promoted.timestamp()
    fired = first_sample(prometheus, 'ALERTS{alertname="PostgresFailover",alertstate="firing",'
                                     f'alias="{target.alias}"}}') - promoted.timestamp()
    print(f"{target.alias} recorded as primary {recorded:.1f} s after its promotion, "
          f"PostgresFailover firing after {fired:.1f} s "
          f"(scrape and rule evaluation every {prometheus_api.TEST_PARAMS.scrape_interval})")


def test_switchover_refusals_name_the_fix(ha: LocalTopology) -> None:
    leader = ha.leader(CLUSTER)
    other = next(n for n in ha.layout.members(CLUSTER) if n != leader)
    nobody = manage(ha, "switchover", CLUSTER, "--to", "nobody")
    assert nobody.returncode == 1
    assert f"CommandError: 'nobody' is no member of {CLUSTER}; choose --to among: " \
        f"{other.alias}" in nobody.stderr

    # The same checks in this process, against the library the command is a shell over.
    cluster = load_shard_map(ha.layout.topology_file).shard(CLUSTER)
    with pytest.raises(SwitchoverError, match=f"'{leader.alias}' already leads {CLUSTER}"):
        choose(cluster, leader.alias)
    with pytest.raises(SwitchoverError, match="is not managed by Patroni"):
        choose(dataclasses.replace(cluster, patroni=()), None)

    # Patroni itself refuses when the only candidate's Patroni does not answer (stopped).
    pid = int((other.datadir.parent / "patroni.pid").read_text())
    os.kill(pid, signal.SIGSTOP)
    try:
        with pytest.raises(SwitchoverError,
                           match=f"Patroni refused the switchover of {CLUSTER} \\(412"):
            switchover(cluster, timeout=20)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ha.leader(CLUSTER) == leader


# A switchover command that fenced the leader and then died (killed before it could lift it).
FENCE_AND_HANG = """
import sys, time
from migrations_tools.switchover_fence import writes_fenced
with writes_fenced(sys.argv[1]):
    print("fenced", flush=True)
    time.sleep(600)
"""


def test_a_fence_whose_command_died_is_lifted(ha: LocalTopology) -> None:
    ha.wait_cluster_streaming(CLUSTER, timeout=60)
    dsn = leader_dsn(ha)
    ids = iter(range(3_000_000, 4_000_000))

    def write() -> None:
        with pg.connect(pooled(ha)) as conn:
            conn.execute("INSERT INTO ha_writes (id) VALUES (%s)", [next(ids)])

    def writes_taken() -> bool:
        try:
            write()
            return True
        except psycopg.errors.ReadOnlySqlTransaction:
            return False

    command = subprocess.Popen([sys.executable, "-c", FENCE_AND_HANG, dsn], cwd=PROJECT_DIR,
                               env={**os.environ, "PYTHONPATH": str(PROJECT_DIR)},
                               stdout=subprocess.PIPE, text=True)
    try:
        assert command.stdout is not None
        assert command.stdout.readline().strip() == "fenced"
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            write()
        # While its command lives, the fence stays, whatever the follower's checks find.
        time.sleep(FENCE_CHECK_SECONDS * 2.5)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            write()
        assert lift_if_stale(dsn) is False
    finally:
        command.kill()
        command.wait()
    # Its holder session died with it: the leader follower lifts the fence.
    wait_for(writes_taken, 30, "writes through PgBouncer taken again after the command died")
    with pg.connect(dsn) as conn:
        left = conn.execute("SELECT sourcefile FROM pg_file_settings "
                            "WHERE name = 'default_transaction_read_only'").fetchall()
    assert left == []
    assert "lifted a switchover's write fence" in (
        ha.layout.root / "pgbouncer" / "follower.log").read_text()
    assert lift_if_stale(dsn) is False  # nothing left to lift
