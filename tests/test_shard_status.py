"""`shard_status` against the session topology, its leak detection (pure, then with objects
made by hand: exit 1, then `--sweep`), and the admin's view of moves: the job list and detail,
and the tenant action that starts a real move in the background."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest

from migrations_tools.leaks import Leak, ReplicationObjects, find_leaks
from tests.client import wait_until
from tests.commands import manage

# --- leak detection, pure ---------------------------------------------------------------------


def test_find_leaks_keeps_unfinished_moves_and_their_sync_slots() -> None:
    objects = {
        "shard_0": ReplicationObjects(
            "shard_0", system_id=100,
            publications=["shardsvc_move_7", "shardsvc_move_8"],
            slots=[("shardsvc_move_7", 55), ("shardsvc_move_8", None),
                   ("pg_900_sync_16400_200", None),  # sync slot of move 7's subscription
                   ("pg_901_sync_16400_200", None),  # of move 9's (finished) subscription
                   ("pg_999_sync_16400_200", None)],  # its subscription is gone
        ),
        "shard_1": ReplicationObjects(
            "shard_1", system_id=200,
            subscriptions={"shardsvc_move_7": 900, "shardsvc_move_9": 901, "other": 5},
        ),
    }
    leaks = find_leaks(objects, active={"shardsvc_move_7"})
    assert {(x.shard, x.kind, x.name) for x in leaks} == {
        ("shard_0", "publication", "shardsvc_move_8"),
        ("shard_0", "slot", "shardsvc_move_8"),
        ("shard_0", "slot", "pg_901_sync_16400_200"),
        ("shard_0", "slot", "pg_999_sync_16400_200"),
        ("shard_1", "subscription", "shardsvc_move_9"),
    }
    # Primaries cloned from one initdb share a system id and oids: a sync slot that may be
    # an unfinished move's is kept.
    objects["shard_2"] = ReplicationObjects("shard_2", system_id=200,
                                            subscriptions={"shardsvc_move_11": 901})
    shared = find_leaks(objects, active={"shardsvc_move_7", "shardsvc_move_11"})
    assert "pg_901_sync_16400_200" not in {x.name for x in shared}
    del objects["shard_2"]
    # A shard that could not be scanned: its subscribers' sync slots are not judged.
    objects["shard_1"] = ReplicationObjects("shard_1", error="down")
    unsure = find_leaks(objects, active={"shardsvc_move_7"})
    assert not any(x.name.startswith("pg_") for x in unsure)
    assert Leak("s", "slot", "x", "why").describe() == "s: slot x (why)"


# --- the command against the session topology -------------------------------------------------


def test_status_shows_servers_lag_shards_tenants_and_no_leaks(topology, tenants) -> None:
    answer = manage(topology, "shard_status", "--tenants")
    out = answer.stdout
    assert answer.returncode == 0, out + answer.stderr
    for replica, cluster in (("default_replica_1", "default"),
                             ("shard_0_replica_1", "shard_0"), ("shard_1_replica_1", "shard_1")):
        assert re.search(rf"^  {replica}\s+replica\s+{cluster}\s+streaming\s+\d+\.\d{{3}} s\s+"
                         r"\d+(\.\d)? [kMG]?B", out, re.M), out
    assert re.search(r"^  shard_0\s+primary\s+shard_0\s+up", out, re.M), out
    for shard in ("shard_0", "shard_1"):
        row = re.search(rf"^  {shard}\s+yes\s+{shard}\s+{shard}_replica_1\s+(\d+)\s+(\d+)\s+",
                        out, re.M)
        assert row, out
        assert int(row.group(1)) >= 1  # the `tenants` fixture put tenants on both shards
    for key, shard in (("a", "shard_0"), ("b", "shard_1"), ("c", "shard_0")):
        assert re.search(rf"^  {tenants[key].slug}\s+{tenants[key].id}\s+{shard}\s+active",
                         out, re.M), out
    assert "cluster lock: free" in out
    assert "leaked replication objects: none" in out


def test_a_leak_is_reported_with_exit_1_and_removed_by_sweep(topology, django_db, admin) -> None:
    from shards.directory import create_tenant
    from shards.models import MoveJob, Tenant

    shard_0, shard_1 = admin("shard_0"), admin("shard_1")
    sysid = shard_1.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0]
    entry = create_tenant(f"leaky-{uuid.uuid4().hex[:8]}", shard="shard_1")
    # An unfinished move whose command died: its objects are not leaks.
    job = MoveJob.objects.using("default").create(tenant_id=entry.id, source="shard_1",
                                                  target="shard_0", state="copying")
    live = job.replication_name
    leaked = "shardsvc_move_987654321"
    sync_slot = f"pg_4000000001_sync_16384_{sysid}"
    try:
        shard_1.execute(f"CREATE PUBLICATION {live}")
        shard_1.execute(f"CREATE PUBLICATION {leaked}")
        shard_1.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [leaked])
        shard_0.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')",
                        [sync_slot])

        found = manage(topology, "shard_status")
        out = found.stdout
        assert found.returncode == 1, out + found.stderr
        assert "leaked replication objects (3):" in out
        assert re.search(rf"^  shard_1\s+publication\s+{leaked}", out, re.M), out
        assert re.search(rf"^  shard_1\s+slot\s+{leaked}", out, re.M), out
        assert re.search(rf"^  shard_0\s+slot\s+{sync_slot}\s+table-sync slot", out, re.M), out
        assert not re.search(rf"^  shard_\d\s+\w+\s+{live}\b", out, re.M), out
        assert "shard_status --sweep" in out
        assert "3 leaked replication object(s)" in found.stderr
        # The unfinished move is listed, with what to do about it.
        assert re.search(rf"^  {job.pk}\s+{entry.slug}\s+shard_1 -> shard_0\s+copying\s+.*"
                         rf"NOT RUNNING: resume with `move_tenant {entry.slug} shard_0`", out,
                         re.M), out

        swept = manage(topology, "shard_status", "--sweep")
        assert swept.returncode == 0, swept.stdout + swept.stderr
        assert f"dropped shard_1: publication {leaked}" in swept.stdout
        assert f"dropped shard_1: slot {leaked}" in swept.stdout
        assert f"dropped shard_0: slot {sync_slot}" in swept.stdout
        assert "leaked replication objects: none" in swept.stdout
        assert shard_1.execute("SELECT array_agg(pubname::text ORDER BY pubname) "
                               "FROM pg_publication").fetchone()[0] == [live]
        for conn in (shard_0, shard_1):
            assert conn.execute("SELECT count(*) FROM pg_replication_slots WHERE slot_name "
                                "IN (%s, %s)", [leaked, sync_slot]).fetchone()[0] == 0

        # Once the job is finished, its publication is a leak too.
        MoveJob.objects.using("default").filter(pk=job.pk).update(state="aborted")
        again = manage(topology, "shard_status")
        assert again.returncode == 1 and f"shard_1: publication {live}" in again.stderr
        assert manage(topology, "shard_status", "--sweep").returncode == 0
    finally:
        for conn in (shard_0, shard_1):
            for name in (live, leaked):
                conn.execute(f"DROP PUBLICATION IF EXISTS {name}")
            conn.execute("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                         "WHERE slot_name IN (%s, %s)", [leaked, sync_slot])
        MoveJob.objects.using("default").filter(pk=job.pk).delete()
        Tenant.objects.using("default").filter(id=entry.id).delete()


# --- the admin --------------------------------------------------------------------------------


@pytest.fixture
def admin_browser(service, django_db):
    from django.contrib.auth import get_user_model

    from tests.test_admin import Browser

    User = get_user_model()
    username, password = f"ops-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    user = User.objects.db_manager("default").create_superuser(username, "", password)
    wait_until(lambda: User.objects.using("default_replica_1").filter(
        username=username).exists(), timeout=10, what="the control replica to have the user")
    browser = Browser(service.url)
    answer = browser.post_form("/admin/login/", {"username": username, "password": password,
                                                 "next": "/admin/"})
    assert answer.status == 302, answer.text[:2000]
    yield browser
    User.objects.using("default").filter(pk=user.pk).delete()


def test_the_admin_starts_a_move_in_the_background_and_shows_its_job(
        topology, admin_browser) -> None:
    from comments.service import get_or_create_thread, post_comment
    from shards.directory import create_tenant
    from shards.models import MoveJob, Tenant
    from shards.tenancy import tenant

    entry = create_tenant(f"admin-moved-{uuid.uuid4().hex[:8]}", shard="shard_0")
    with tenant(entry):
        thread, _ = get_or_create_thread("https://moved.example/1", "One")
        for n in range(5):
            post_comment(thread.id, author="u1", author_name="", body=f"c{n}", parent_id=None)

    browser = admin_browser
    # The action asks for the target first (an intermediate page, nothing started yet).
    form = browser.post_form("/admin/shards/tenant/", {
        "action": "move_to_another_shard", "_selected_action": str(entry.id), "index": "0",
    })
    assert form.status == 200, form.text[:2000]
    assert "Target shard" in form.text and entry.slug in form.text
    assert '<option value="shard_1">' in form.text
    assert not MoveJob.objects.using("default").filter(tenant_id=entry.id).exists()

    started = browser.post_form("/admin/shards/tenant/", {
        "action": "move_to_another_shard", "_selected_action": str(entry.id),
        "apply": "yes", "target": "shard_1",
    })
    assert started.status == 302, started.text[:2000]
    listing = browser.request("/admin/shards/tenant/")
    assert f"Started moving {entry.slug} to shard_1 in the background" in listing.text
    log = re.search(r"log (/\S+\.log)\)", listing.text)
    assert log and Path(log.group(1)).parent == topology.layout.root / "moves", listing.text

    def finished() -> bool:
        job = MoveJob.objects.using("default").filter(tenant_id=entry.id).first()
        return job is not None and job.state in ("done", "failed", "aborted")

    wait_until(finished, timeout=60, what="the admin's move to finish")
    job = MoveJob.objects.using("default").get(tenant_id=entry.id)
    assert job.state == "done", (job.state, job.error, Path(log.group(1)).read_text())
    assert job.reason.startswith("admin: ops-")
    assert Tenant.objects.using("default").get(id=entry.id).shard == "shard_1"
    # The job is marked done just before the command prints its report and exits.
    wait_until(lambda: "moved tenant" in Path(log.group(1)).read_text(), timeout=30,
               what="the move's report in its log")

    jobs = browser.request("/admin/shards/movejob/")
    assert jobs.status == 200, jobs.text[:2000]
    assert entry.slug in jobs.text and "shard_0" in jobs.text
    # The admin reads from a control replica: it may show the job a moment behind.
    wait_until(lambda: "total_seconds" in browser.request(
        f"/admin/shards/movejob/{job.pk}/change/").text, timeout=10, what="the final report")
    detail = browser.request(f"/admin/shards/movejob/{job.pk}/change/")
    assert detail.status == 200, detail.text[:2000]
    assert "verification" in detail.text and "(done)" in detail.text  # the report
    assert 'name="_save"' not in detail.text  # read-only
    again = browser.post_form("/admin/shards/tenant/", {
        "action": "move_to_another_shard", "_selected_action": str(entry.id),
        "apply": "yes", "target": "shard_1",
    }, form_page="/admin/shards/tenant/")
    assert again.status == 302
    assert "is already on shard_1: not moved" in browser.request("/admin/shards/tenant/").text
