"""Online tenant moves against the real topology, with the service running under Gunicorn."""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.topology import LocalTopology
from migrations_tools.lock import cluster_lock
from shards.models import MoveJob, Tenant
from tests.api_client import SiteClient, create_site
from tests.client import wait_until
from tests.commands import manage

pytestmark = pytest.mark.usefixtures("django_db")


def replication_objects(topology: LocalTopology) -> dict[str, list[str]]:
    """Logical slots, publications and subscriptions on every primary."""
    found: dict[str, list[str]] = {}
    for node in topology.layout.nodes():
        if node.role != "primary":
            continue
        with topology.admin_connect(node) as conn:
            names = [r[0] for r in conn.execute(
                "SELECT slot_name FROM pg_replication_slots WHERE slot_type = 'logical' "
                "UNION ALL SELECT pubname FROM pg_publication "
                "UNION ALL SELECT subname FROM pg_subscription").fetchall()]
        if names:
            found[node.alias] = names
    return found


def rows_on(topology: LocalTopology, alias: str, tenant_id: int) -> int:
    with topology.admin_connect(topology.node(alias)) as conn:
        return sum(conn.execute(
            f"SELECT count(*) FROM {table} WHERE tenant_id = %s", [tenant_id]).fetchone()[0]
            for table in ("comments_thread", "comments_comment", "comments_vote"))


def fences(topology: LocalTopology) -> int:
    total = 0
    for alias in ("shard_0", "shard_1"):
        with topology.admin_connect(topology.node(alias)) as conn:
            total += conn.execute("SELECT count(*) FROM shardsvc_fence").fetchone()[0]
    return total


def tenant_of(site: SiteClient) -> Tenant:
    return Tenant.objects.using("default").get(slug=site.slug)


def seeded_site(service, topology, shard: str, comments: int = 20) -> tuple[SiteClient, int]:
    site = create_site(service, topology, prefix="mv", shard=shard).as_user("writer", "W")
    thread = site.thread()
    for i in range(comments):
        site.comment(thread, f"seed {i}")
    return site, thread


def test_move_under_load_loses_and_duplicates_nothing(service, topology) -> None:
    moving, m_thread = seeded_site(service, topology, "shard_0", comments=50)
    other, o_thread = seeded_site(service, topology, "shard_1", comments=5)
    tenant_id = tenant_of(moving).id
    acked: dict[str, list[int]] = {"moving": [], "other": []}
    failures: list[tuple[str, int, object]] = []
    read_statuses: Counter[int] = Counter()
    stop = threading.Event()

    def writer(name: str, site: SiteClient, thread: int, n: int) -> None:
        me = site.as_user(f"{name}-{n}")
        i = 0
        while not stop.is_set():
            answer = me.call("POST", f"/threads/{thread}/comments",
                             {"body": f"{name} {n} {i}"}, user=True)
            if answer.status == 201:
                acked[name].append(int(answer.body["id"]))
            else:
                failures.append((name, answer.status, answer.body))
            i += 1

    def reader() -> None:
        while not stop.is_set():
            answer = moving.call("GET", f"/threads/{m_thread}/comments?limit=5")
            read_statuses[answer.status] += 1

    with ThreadPoolExecutor(max_workers=9) as pool:
        for n in range(4):
            pool.submit(writer, "moving", moving, m_thread, n)
        for n in range(2):
            pool.submit(writer, "other", other, o_thread, n)
        for _ in range(3):
            pool.submit(reader)
        try:
            # The move starts under load: writes to both sites and reads already answered.
            wait_until(lambda: len(acked["moving"]) >= 12 and len(acked["other"]) >= 6
                       and sum(read_statuses.values()) >= 6,
                       timeout=30, what="writes and reads flowing before the move")
            move = manage(topology, "move_tenant", moving.slug, "shard_1", "--grace", "1")
            # ... and goes on after it: writes acknowledged by the tenant's new shard.
            after_move = len(acked["moving"])
            wait_until(lambda: len(acked["moving"]) >= max(after_move + 12, 21)
                       and len(acked["other"]) >= 6,
                       timeout=30, what="writes acknowledged after the move")
        finally:
            stop.set()  # the workers end; a failed wait still reports
    print(move.stdout[-2500:])
    assert move.returncode == 0, move.stdout[-2000:] + move.stderr[-3000:]
    assert failures == []
    assert not [s for s in read_statuses if s >= 500], read_statuses
    assert len(acked["moving"]) > 20 and len(acked["other"]) > 5

    job = MoveJob.objects.using("default").filter(tenant_id=tenant_id).latest("created_at")
    assert (job.state, job.verified) == ("done", True)
    assert job.write_pause_ms is not None
    assert tenant_of(moving).shard == "shard_1"
    with topology.admin_connect(topology.node("shard_1")) as conn:
        found = conn.execute(
            "SELECT count(*), count(DISTINCT id) FROM comments_comment "
            "WHERE tenant_id = %s AND id = ANY(%s)", [tenant_id, acked["moving"]]).fetchone()
        total = conn.execute("SELECT count(*) FROM comments_comment WHERE tenant_id = %s",
                             [tenant_id]).fetchone()[0]
    assert found == (len(acked["moving"]), len(acked["moving"]))  # every ack, exactly once
    assert total == 50 + len(acked["moving"])
    assert rows_on(topology, "shard_0", tenant_id) == 0  # the source is clean
    assert replication_objects(topology) == {}
    assert fences(topology) == 0
    # The site serves from its new shard, counts intact (once replicas have replayed the
    # other writers' last comments: this client's token does not cover them).
    wait_until(
        lambda: moving.call("GET", f"/threads/{m_thread}").body["comment_count"] == total,
        timeout=15, what="the comment count on the new shard",
    )


@pytest.mark.parametrize(("crash_at", "then"), [
    ("copying", "abort"),
    ("catching_up", "rerun"),
    ("cutover", "abort"),
    ("fenced", "rerun"),
    ("fenced", "abort"),
    ("flipped", "rerun"),
    ("cleanup", "rerun"),
])
def test_a_move_killed_at_any_phase_recovers(service, topology, crash_at, then) -> None:
    site, thread = seeded_site(service, topology, "shard_0", comments=10)
    tenant_id = tenant_of(site).id
    crashed = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0",
                     "--crash-at", crash_at)
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr[-2000:]
    job = MoveJob.objects.using("default").filter(tenant_id=tenant_id).latest("created_at")
    expected_state = "cutover" if crash_at == "fenced" else crash_at
    assert job.state == expected_state

    # The site keeps serving reads whatever the phase...
    assert site.call("GET", f"/threads/{thread}/comments").status == 200
    # ...and a write either lands now or waits for the fence and lands after the recovery.
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending_write = pool.submit(site.call, "POST", f"/threads/{thread}/comments",
                                    {"body": "during recovery"}, user=True)
        if then == "abort":
            recovered = manage(topology, "move_tenant", site.slug, "--abort")
        else:
            recovered = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0")
        write = pending_write.result(timeout=60)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr[-2000:]
    assert write.status == 201, write.body

    job.refresh_from_db(using="default")
    expected_shard = "shard_0" if then == "abort" else "shard_1"
    other_shard = "shard_1" if then == "abort" else "shard_0"
    assert job.state == ("aborted" if then == "abort" else "done")
    assert tenant_of(site).shard == expected_shard
    assert tenant_of(site).state == "active"
    assert rows_on(topology, other_shard, tenant_id) == 0
    assert rows_on(topology, expected_shard, tenant_id) == 1 + 10 + 1  # thread, seeds, write
    assert replication_objects(topology) == {}
    assert fences(topology) == 0
    after = site.call("POST", f"/threads/{thread}/comments", {"body": "after"}, user=True)
    assert after.status == 201


def test_abort_after_the_flip_is_refused(service, topology) -> None:
    site, _ = seeded_site(service, topology, "shard_1", comments=1)
    crashed = manage(topology, "move_tenant", site.slug, "shard_0", "--crash-at", "cleanup")
    assert crashed.returncode == 70
    refused = manage(topology, "move_tenant", site.slug, "--abort")
    assert refused.returncode == 1
    assert "already flipped" in refused.stderr and "move the tenant back" in refused.stderr
    assert manage(topology, "move_tenant", site.slug, "shard_0").returncode == 0
    assert replication_objects(topology) == {}


@pytest.mark.parametrize(("args", "message"), [
    (["{slug}", "shard_0"], "already on shard_0"),
    (["{slug}", "shard_9"], "unknown shard 'shard_9'"),
    (["no-such-tenant-x", "shard_1"], "no tenant 'no-such-tenant-x'"),
    (["{slug}"], "name the target shard"),
    (["{slug}", "--abort"], "no unfinished move"),
])
def test_bad_moves_are_clear_command_errors(service, topology, args, message) -> None:
    site = create_site(service, topology, prefix="bad", shard="shard_0")
    result = manage(topology, "move_tenant", *[a.format(slug=site.slug) for a in args])
    assert result.returncode == 1
    assert "CommandError" in result.stderr or "Error" in result.stderr
    assert message in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr


def test_moves_and_migrations_exclude_each_other(service, topology) -> None:
    site = create_site(service, topology, prefix="lock", shard="shard_0")
    with cluster_lock(f"move_tenant {site.slug}"):
        migrate = manage(topology, "migrate_shards")
    assert migrate.returncode != 0
    assert f"move_tenant {site.slug}" in migrate.stderr + migrate.stdout
    with cluster_lock("migrate_shards"):
        move = manage(topology, "move_tenant", site.slug, "shard_1")
    assert move.returncode == 1
    assert "migrate_shards" in move.stderr
    assert tenant_of(site).shard == "shard_0"
    assert MoveJob.objects.using("default").filter(tenant__slug=site.slug).count() == 0
