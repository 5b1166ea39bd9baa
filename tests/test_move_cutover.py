"""The cutover's ordering in an online move: the directory flips to the target only once the
target has applied the source's last write. Logical replication is normally so quick that a flip
made too early goes unnoticed; here the target's apply is held back by a lock on the target table,
so a write made just before the fence is still unapplied when the mover reaches the flip."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from deploy.topology import LocalTopology
from migrations_tools.lock import cluster_lock
from migrations_tools.move_jobs import MoveSettings, start_move
from migrations_tools.moves import Mover
from shards.models import MoveJob, Tenant
from tests.api_client import create_site
from tests.client import wait_until

pytestmark = pytest.mark.usefixtures("django_db")

SOURCE, TARGET = "shard_0", "shard_1"
# How long the mover is watched, with the write unapplied on the target, for a flip it must not
# make. A mover that does not wait flips within milliseconds of the fence (it only checks for
# older transactions, flushes and opens a snapshot); the cutover timeout (20 s) is far above.
HOLD_SECONDS = 2.0

APPLY_BLOCKED = """
    SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
    WHERE NOT l.granted AND a.backend_type LIKE 'logical replication%worker'
      AND l.relation = 'comments_comment'::regclass
"""


def placement(tenant_id: int) -> str:
    return Tenant.objects.using("default").values_list("shard", flat=True).get(id=tenant_id)


def undo_move(topology: LocalTopology, job: MoveJob) -> None:
    """Leave nothing of a move that did not finish: later tests check for leftovers."""
    job.refresh_from_db(using="default")
    if job.state in MoveJob.ACTIVE_STATES and job.state not in (
            MoveJob.State.FLIPPED, MoveJob.State.CLEANUP):
        Mover(job).abort()
        return
    if job.state == MoveJob.State.DONE:
        return
    mover = Mover(job)
    try:
        mover.drop_replication()
    finally:
        mover.close()
    for alias in (SOURCE, TARGET):
        with topology.admin_connect(topology.node(alias)) as conn:
            conn.execute("DELETE FROM shardsvc_fence WHERE tenant_id = %s", [job.tenant_id])


def test_the_flip_waits_until_the_target_has_applied_the_last_write(
    service, topology: LocalTopology, admin,
) -> None:
    site = create_site(service, topology, prefix="cutover", shard=SOURCE).as_user("w", "W")
    thread = site.thread()
    site.comment(thread, "copied by the initial sync")
    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    target_lock = admin(TARGET)
    watch_target = admin(TARGET)
    watch_source = admin(SOURCE)
    last_write: dict[str, Any] = {}
    outcome: dict[str, Any] = {}

    def at_state(message: str) -> None:
        # Called as the job enters cutover, before the fence goes in.
        if message == "[cutover]" and not last_write:
            target_lock.execute("BEGIN")
            target_lock.execute("LOCK TABLE comments_comment IN SHARE MODE")
            last_write.update(site.comment(thread, "written just before the fence"))

    job = start_move(tenant_id, TARGET, reason="cutover ordering test")

    def run_move() -> None:
        from django.db import connections

        try:
            with cluster_lock(f"move_tenant {site.slug}") as lock:
                outcome["job"] = Mover(
                    job, settings=MoveSettings(grace_seconds=0.0, cutover_timeout=20.0),
                    progress=at_state, still_locked=lock.ensure_held,
                ).run()
        except BaseException as exc:  # reported by the test thread
            outcome["error"] = exc
        finally:
            connections.close_all()

    mover = threading.Thread(target=run_move, name="mover")
    mover.start()
    try:
        # The write is committed on the source and the target's apply waits for our lock.
        def apply_held_back() -> bool:
            assert "error" not in outcome, outcome["error"]  # the move failed early: say why
            return bool(last_write) and watch_target.execute(APPLY_BLOCKED).fetchone()[0] > 0

        wait_until(apply_held_back, timeout=60, interval=0.01,
                   what="the target's apply to wait for the lock")
        wait_until(lambda: watch_source.execute(
            "SELECT count(*) FROM shardsvc_fence WHERE tenant_id = %s", [tenant_id],
        ).fetchone()[0] > 0, timeout=30, interval=0.005, what="the fence")
        held_until = time.monotonic() + HOLD_SECONDS
        while time.monotonic() < held_until:
            on_target = watch_target.execute(
                "SELECT count(*) FROM comments_comment WHERE id = %s", [int(last_write["id"])],
            ).fetchone()[0]
            assert placement(tenant_id) == SOURCE, (
                f"the directory flipped to {TARGET} while the target had not applied the last "
                f"write (comment {last_write['id']} on the target: {on_target}): that write "
                "would be lost for the site")
            assert watch_target.execute(APPLY_BLOCKED).fetchone()[0] > 0
            time.sleep(0.01)
        assert mover.is_alive(), outcome
        target_lock.execute("ROLLBACK")  # let the target apply; the mover may flip now
        mover.join(timeout=120)
        assert not mover.is_alive(), "the move did not finish after the apply was released"
        assert "error" not in outcome, outcome.get("error")
        done = outcome["job"]
        assert (done.state, done.verified) == (MoveJob.State.DONE, True), done.report
        assert placement(tenant_id) == TARGET
        with topology.admin_connect(topology.node(TARGET)) as conn:
            assert conn.execute(
                "SELECT body FROM comments_comment WHERE id = %s AND tenant_id = %s",
                [int(last_write["id"]), tenant_id],
            ).fetchone() == ("written just before the fence",)
        page = site.call("GET", f"/threads/{thread}/comments?order=oldest")
        assert [c["body"] for c in page.body["items"]] == [
            "copied by the initial sync", "written just before the fence"]
    finally:
        target_lock.execute("ROLLBACK")  # a no-op (a warning) once released above
        mover.join(timeout=120)
        undo_move(topology, job)
