"""What a move shows while it runs: continuous verification of settled id ranges before the
cutover (and the flip's verification skipping them), a difference caught before the cutover,
and the move's gauges in /metrics."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest

from migrations_tools.lock import cluster_lock
from migrations_tools.move_jobs import MoveError, MoveSettings, start_move
from migrations_tools.moves import Mover
from shards.models import MoveJob, Tenant
from tests.test_metrics import scrape
from tests.test_moves import fences, replication_objects, rows_on, seeded_site

pytestmark = pytest.mark.usefixtures("django_db")

# Every row already written counts as settled: the ranges cover the whole seeded tenant.
SETTLED_NOW = MoveSettings(grace_seconds=0.0, settle_seconds=0.0, continuous_ranges=4)


def run_move(slug: str, tenant_id: int, target: str, settings: MoveSettings,
             progress: Any, *, keep_failed: bool = False) -> MoveJob:
    """The move run as move_tenant runs it. One that fails is aborted (its slot and copied
    rows gone) before the error goes on, so that it leaves nothing for later tests, unless the
    test looks at the failed job itself (`keep_failed`)."""
    job = start_move(tenant_id, target, reason="move checks test")
    with cluster_lock(f"move_tenant {slug}") as lock:
        try:
            return Mover(job, settings=settings, progress=progress,
                         still_locked=lock.ensure_held).run()
        except MoveError:
            if not keep_failed:
                job.refresh_from_db(using="default")
                Mover(job).abort()
            raise


def test_settled_ranges_are_verified_before_the_cutover_and_skipped_at_the_flip(
        service, topology) -> None:
    site, _thread = seeded_site(service, topology, "shard_0", comments=30)
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    messages: list[str] = []
    metrics: dict[str, Any] = {}

    def progress(message: str) -> None:
        messages.append(message)
        if message.startswith("continuous verification") and "during" not in metrics:
            metrics["during"] = scrape(service)  # the move is running: /metrics shows it

    job = run_move(site.slug, tenant_id, "shard_1", SETTLED_NOW, progress)
    assert (job.state, job.verified) == ("done", True), job.report
    continuous = job.report["continuous"]
    assert len(continuous["ranges"]) == 4
    assert sorted(continuous["verified"]) == ["0", "1", "2", "3"]
    assert sum(sum(r["rows"].values()) for r in continuous["verified"].values()) == 1 + 30
    progress_lines = [m for m in messages if m.startswith("continuous verification")]
    assert progress_lines[-1] == "continuous verification: 4/4 id ranges match (31 rows)"
    # Unchanged since, so the flip compared none of those rows again.
    assert job.report["verification"]["skipped_ranges"] == 4
    # The write pause step by step, in order, adding up to the pause.
    steps = job.report["cutover_ms"]
    assert [step for step, _ in steps] == ["older_transactions", "flush", "applied", "snapshot",
                                           "flip"]
    assert sum(ms for _, ms in steps) == pytest.approx(job.write_pause_ms, abs=0.5)
    assert all(t["source_rows"] == 0 for t in job.report["verification"]["tables"])
    assert rows_on(topology, "shard_0", tenant_id) == 0
    assert rows_on(topology, "shard_1", tenant_id) == 31

    labels = {"job": str(job.pk), "tenant": site.slug, "source": "shard_0",
              "target": "shard_1"}
    during = metrics["during"]
    assert during.value("shardsvc_move_state", **labels, state="catching_up") == 1
    assert during.value("shardsvc_move_state", **labels, state="done") == 0
    assert during.value("shardsvc_move_rows_copied", **labels) == 31
    assert during.value("shardsvc_move_rows_total", **labels) == 31
    after = scrape(service)
    assert after.value("shardsvc_move_state", **labels, state="done") == 1
    assert after.value("shardsvc_move_state", **labels, state="catching_up") == 0
    assert after.value("shardsvc_move_lag_bytes", **labels) == 0
    assert after.value("shardsvc_move_write_pause_seconds", **labels) > 0



def test_a_busy_row_keeps_only_its_own_table_for_the_flip(service, topology) -> None:
    site, thread = seeded_site(service, topology, "shard_0", comments=30)
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    stop = threading.Event()
    touches = []

    def touch() -> None:  # the thread's row written all along, as a busy page's counter is
        with topology.admin_connect(topology.node("shard_0")) as conn:
            while not stop.is_set():
                conn.execute("UPDATE comments_thread SET title = %s WHERE id = %s",
                             [uuid.uuid4().hex, thread])
                touches.append(1)

    toucher = threading.Thread(target=touch, daemon=True)

    def progress(message: str) -> None:
        if message == "[catching_up]":
            toucher.start()
        elif message == "[cutover]":  # before the fence, which would refuse these writes
            stop.set()
            toucher.join()

    job = run_move(site.slug, tenant_id, "shard_1", SETTLED_NOW, progress)
    assert (job.state, job.verified) == ("done", True), job.report
    assert touches
    continuous = job.report["continuous"]
    # The thread (the tenant's first id) sits in range 0, which differed while it changed...
    assert continuous["tries"].get("0", 0) >= 1, continuous
    # ...but its comments there did not change: verified before the cutover, and not compared
    # again at the flip, in any range.
    assert continuous["verified"]["0"]["rows"]["comments_comment"] > 0
    verification = job.report["verification"]
    assert verification["skipped_by_table"]["comments_comment"] == 4
    compared = {t["table"]: t["source_rows"] for t in verification["tables"]}
    assert compared["comments_comment"] == 0, verification
    assert rows_on(topology, "shard_1", tenant_id) == 31


def test_the_service_names_its_connections_by_process(service, topology, admin) -> None:
    # Scrapes read the move jobs from the control database through PgBouncer, which passes the
    # worker's application_name on to the server connection it lends.
    scrape(service)
    names = [r[0] for r in admin("default").execute(
        "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE "
        "'shardsvc-web-%'").fetchall()]
    assert names, "no server connection carries a worker's application_name"
    assert all(name.removeprefix("shardsvc-web-").isdigit() for name in names), names


def test_a_difference_in_a_settled_range_stops_the_move_before_the_cutover(
        service, topology, admin) -> None:
    site, _thread = seeded_site(service, topology, "shard_0", comments=10)
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    target = admin("shard_1")

    def progress(message: str) -> None:
        if message == "[catching_up]":  # copied: now the target goes wrong behind its back
            target.execute("UPDATE comments_comment SET body = 'not what the source says' "
                           "WHERE id = (SELECT min(id) FROM comments_comment "
                           "WHERE tenant_id = %s)", [tenant_id])

    with pytest.raises(MoveError, match=r"continuous verification: .* differ between "
                                        r"shard_0 and shard_1"):
        run_move(site.slug, tenant_id, "shard_1", SETTLED_NOW, progress, keep_failed=True)
    job = MoveJob.objects.using("default").filter(tenant_id=tenant_id).latest("created_at")
    assert job.state == "catching_up" and job.report["continuous"]["differs"]
    # Nothing was cut over: the tenant serves from its source, unfenced.
    assert Tenant.objects.using("default").get(id=tenant_id).shard == "shard_0"
    assert fences(topology) == 0
    Mover(job).abort()
    assert rows_on(topology, "shard_1", tenant_id) == 0
    assert rows_on(topology, "shard_0", tenant_id) == 11
    assert replication_objects(topology) == {}



def test_a_cutover_that_gives_up_is_tried_again(service, topology, admin) -> None:
    site, _thread = seeded_site(service, topology, "shard_0", comments=5)
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    # A transaction older than the fence keeps the first cutover waiting until it gives up.
    old = admin("shard_0")
    messages: list[str] = []

    def progress(message: str) -> None:
        messages.append(message)
        if message == "[cutover]" and messages.count("[cutover]") == 1:
            old.execute("BEGIN")
            old.execute("SELECT 1")
        elif message.startswith("cutover attempt 1/3 gave up"):
            assert fences(topology) == 0  # writes go on meanwhile
            old.execute("ROLLBACK")

    settings = MoveSettings(grace_seconds=0.0, cutover_timeout=1.0, cutover_retry_pause=0.1)
    job = run_move(site.slug, tenant_id, "shard_1", settings, progress)
    assert (job.state, job.verified) == ("done", True), job.report
    failures = job.report["cutover_failures"]
    assert len(failures) == 1 and "transactions older than the fence" in failures[0]
    assert messages.count("[cutover]") == 2
    assert rows_on(topology, "shard_1", tenant_id) == 6
    assert replication_objects(topology) == {}


def test_a_cutover_that_keeps_giving_up_fails_after_its_attempts(
        service, topology, admin) -> None:
    site, _thread = seeded_site(service, topology, "shard_0", comments=5)
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    old = admin("shard_0")
    old.execute("BEGIN")
    old.execute("SELECT 1")
    settings = MoveSettings(grace_seconds=0.0, cutover_timeout=0.5, cutover_attempts=2,
                            cutover_retry_pause=0.1)
    try:
        with pytest.raises(MoveError, match=r"transactions older than the fence .* \(cutover "
                                            r"attempt 2/2; job \d+ stays at catching_up"):
            run_move(site.slug, tenant_id, "shard_1", settings, None, keep_failed=True)
    finally:
        old.execute("ROLLBACK")
    job = MoveJob.objects.using("default").filter(tenant_id=tenant_id).latest("created_at")
    assert job.state == "catching_up" and len(job.report["cutover_failures"]) == 2
    assert Tenant.objects.using("default").get(id=tenant_id).shard == "shard_0"
    assert fences(topology) == 0
    Mover(job).abort()
    assert replication_objects(topology) == {}
    assert rows_on(topology, "shard_0", tenant_id) == 6
