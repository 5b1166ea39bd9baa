"""A move killed (SIGKILL) in the middle of its initial copy: its slot exists, one table's rows
are committed on the target and another's COPY is running. Rerunning the command starts the copy
over and finishes; aborting rolls it back. Either way nothing is left: no slot, publication,
subscription, copied row or fence, and `shard_status` (which flags the stuck move meanwhile)
finds no leak."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from deploy.topology import PROJECT_DIR
from shards.models import MoveJob
from tests.client import wait_until
from tests.commands import manage
from tests.test_moves import fences, replication_objects, rows_on, seeded_site, tenant_of

pytestmark = pytest.mark.usefixtures("django_db")


def copy_waiting_on_lock(topology, job_id: int) -> bool:
    """Whether the job's COPY into the target's comments waits for the lock the test holds."""
    with topology.admin_connect(topology.node("shard_1")) as conn:
        return bool(conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
            "AND wait_event_type = 'Lock' AND query LIKE 'COPY %%comments_comment%%'",
            [f"shardsvc move {job_id} copy"]).fetchone()[0])


@pytest.mark.parametrize("then", ["rerun", "abort"])
def test_a_move_killed_mid_copy_starts_over_or_aborts_and_leaks_nothing(
        service, topology, then) -> None:
    site, thread = seeded_site(service, topology, "shard_0", comments=10)
    tenant_id = tenant_of(site).id
    env = topology.service_env()
    # The target's comments table is held in SHARE mode, so the mover's COPY into it waits
    # (after the threads table's copy committed): the kill lands mid-copy, every time.
    with topology.admin_connect(topology.node("shard_1")) as holder:
        holder.execute("BEGIN")
        holder.execute("LOCK TABLE comments_comment IN SHARE MODE")
        mover = subprocess.Popen(
            [sys.executable, "manage.py", "move_tenant", site.slug, "shard_1", "--grace", "0"],
            cwd=PROJECT_DIR, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            job = wait_until(
                lambda: MoveJob.objects.using("default").filter(
                    tenant_id=tenant_id, state="copying").first(),
                timeout=60, what="the move's copy to start")
            wait_until(lambda: copy_waiting_on_lock(topology, job.pk), timeout=60,
                       what="the mover's COPY into comments_comment")
            wait_until(lambda: rows_on(topology, "shard_1", tenant_id) == 1, timeout=30,
                       what="the threads table's copy (one row) to commit on the target")
        finally:
            mover.send_signal(signal.SIGKILL)
            mover.wait(timeout=30)
        holder.execute("ROLLBACK")
    assert mover.returncode == -signal.SIGKILL

    # Killed: the slot it made holds WAL, and nothing drives the move. shard_status says so.
    assert f"shardsvc_move_{job.pk}" in replication_objects(topology)["shard_0"]
    status = manage(topology, "shard_status", "--tenant", site.slug)
    assert status.returncode == 1, status.stdout + status.stderr
    assert "NOT RUNNING" in status.stdout
    # The site serves from the source meanwhile.
    assert site.call("POST", f"/threads/{thread}/comments", {"body": "mid"},
                     user=True).status == 201

    if then == "abort":
        recovered = manage(topology, "move_tenant", site.slug, "--abort")
    else:
        recovered = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr[-2000:]
    job.refresh_from_db(using="default")
    kept, emptied = ("shard_0", "shard_1") if then == "abort" else ("shard_1", "shard_0")
    assert job.state == ("aborted" if then == "abort" else "done")
    assert tenant_of(site).shard == kept
    assert rows_on(topology, kept, tenant_id) == 1 + 10 + 1  # thread, seeds, the write
    assert rows_on(topology, emptied, tenant_id) == 0
    assert replication_objects(topology) == {}
    assert fences(topology) == 0
    status = manage(topology, "shard_status", "--tenant", site.slug)
    assert status.returncode == 0, status.stdout + status.stderr
    assert site.call("POST", f"/threads/{thread}/comments", {"body": "after"},
                     user=True).status == 201
