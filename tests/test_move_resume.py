"""A move whose command died after the flip: the resumed verification, the "unverified" end that
keeps the source rows, `--accept-unverified`, and `shard_status` flagging moves nobody drives."""

from __future__ import annotations

import re
import uuid

import pytest

from shards.models import MoveJob
from tests.commands import manage
from tests.test_moves import fences, replication_objects, rows_on, seeded_site, tenant_of

pytestmark = pytest.mark.usefixtures("django_db")


def crash_after_the_flip(topology, site) -> MoveJob:
    crashed = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0",
                     "--crash-at", "flipped")
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr[-2000:]
    job = MoveJob.objects.using("default").filter(tenant__slug=site.slug).latest("created_at")
    assert job.state == "flipped" and job.flip_snapshot, (job.state, job.flip_snapshot)
    assert tenant_of(site).shard == "shard_1"
    return job


def test_a_resume_after_the_flip_verifies_the_unchanged_rows_and_finishes(
        service, topology) -> None:
    site, thread = seeded_site(service, topology, "shard_0", comments=10)
    tenant_id = tenant_of(site).id
    crash_after_the_flip(topology, site)
    # The site writes on its new shard: a new comment (and the thread's count), an edit and
    # a (soft) delete: rows written since the flip, which cannot be compared.
    page = site.call("GET", f"/threads/{thread}/comments?order=oldest&limit=3").body["items"]
    assert site.call("PATCH", f"/comments/{page[0]['id']}", {"body": "edited"},
                     user=True).status == 200
    assert site.call("DELETE", f"/comments/{page[1]['id']}", user=True).status == 204
    site.comment(thread, "after the flip")

    # Accepting needs an unverified move: it is refused for this one.
    refused = manage(topology, "move_tenant", site.slug, "shard_1", "--accept-unverified")
    assert refused.returncode == 1
    assert "not an unverified one" in refused.stderr

    resumed = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr[-2000:]
    assert "verified (resumed)" in resumed.stdout
    job = MoveJob.objects.using("default").filter(tenant_id=tenant_id).latest("created_at")
    assert (job.state, job.verified) == ("done", True)
    tables = {t["table"]: t for t in job.report["verification"]["tables"]}
    # Thread (count changed), two comments changed, one new comment.
    assert tables["comments_thread"]["written_since_flip"] == 1
    assert tables["comments_comment"]["written_since_flip"] == 3
    assert tables["comments_comment"]["source_rows"] == 10 - 2
    assert all(not t["bad_buckets"] for t in tables.values())
    assert rows_on(topology, "shard_0", tenant_id) == 0
    assert rows_on(topology, "shard_1", tenant_id) == 1 + 10 + 1
    assert replication_objects(topology) == {}
    assert fences(topology) == 0


def test_a_resume_that_cannot_verify_keeps_the_source_rows_until_accepted(
        service, topology, admin) -> None:
    site, thread = seeded_site(service, topology, "shard_0", comments=10)
    tenant_id = tenant_of(site).id
    job = crash_after_the_flip(topology, site)

    # No command drives the move now: shard_status says so, with the command to resume it.
    status = manage(topology, "shard_status", "--tenant", site.slug)
    assert status.returncode == 1, status.stdout + status.stderr
    assert re.search(rf"^  {job.pk}\s+{site.slug}\s+shard_0 -> shard_1\s+flipped\s+.*"
                     rf"NOT RUNNING: resume with `move_tenant {site.slug} shard_1`",
                     status.stdout, re.M), status.stdout
    assert "1 move(s) not running" in status.stderr

    # A row deleted on the target since the flip looks just like a row the copy lost.
    target = admin("shard_1")
    lost = target.execute("SELECT max(id) FROM comments_comment WHERE tenant_id = %s",
                          [tenant_id]).fetchone()[0]
    target.execute("DELETE FROM comments_comment WHERE id = %s", [lost])

    resumed = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0")
    assert resumed.returncode == 1, resumed.stdout + resumed.stderr[-2000:]
    assert "UNVERIFIED" in resumed.stderr
    assert f"move_tenant {site.slug} shard_1 --accept-unverified" in resumed.stderr
    job.refresh_from_db(using="default")
    assert (job.state, job.verified) == ("unverified", None)
    assert job.report["verification"]["tables"]
    # The source keeps every row, fenced; no replication object holds WAL meanwhile.
    assert rows_on(topology, "shard_0", tenant_id) == 1 + 10
    assert fences(topology) == 1
    assert replication_objects(topology) == {}
    # The site serves from the target all along.
    assert site.call("GET", f"/threads/{thread}/comments").status == 200

    status = manage(topology, "shard_status")
    assert status.returncode == 1
    assert f"`move_tenant {site.slug} shard_1 --accept-unverified`" in status.stdout
    again = manage(topology, "move_tenant", site.slug, "shard_1")
    assert again.returncode == 1 and "--accept-unverified" in again.stderr
    assert rows_on(topology, "shard_0", tenant_id) == 1 + 10
    aborted = manage(topology, "move_tenant", site.slug, "--abort")
    assert aborted.returncode == 1 and "--accept-unverified" in aborted.stderr

    accepted = manage(topology, "move_tenant", site.slug, "shard_1", "--grace", "0",
                      "--accept-unverified")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr[-2000:]
    job.refresh_from_db(using="default")
    assert (job.state, job.verified) == ("done", None)
    assert "accepted_unverified_at" in job.report
    assert rows_on(topology, "shard_0", tenant_id) == 0
    assert rows_on(topology, "shard_1", tenant_id) == 1 + 10 - 1
    assert fences(topology) == 0
    assert manage(topology, "shard_status", "--tenant", site.slug).returncode == 0


def test_shard_status_filters_tenants_and_sorts_them_naturally(topology) -> None:
    from shards.directory import create_tenant
    from shards.models import Tenant

    prefix = f"nat{uuid.uuid4().hex[:6]}"
    made = [create_tenant(f"{prefix}-{n}", shard="shard_0") for n in (10, 3, 2)]
    try:
        shown = manage(topology, "shard_status", "--tenant", f"{prefix}-10",
                       "--tenant", f"{prefix}-3", "--tenant", str(made[2].id))
        assert shown.returncode == 0, shown.stdout + shown.stderr
        listed = re.findall(rf"^  ({prefix}-\d+)\s+\d+\s+shard_0\s+active\s+\d+\s+0\s+0$",
                            shown.stdout, re.M)
        assert listed == [f"{prefix}-2", f"{prefix}-3", f"{prefix}-10"], shown.stdout
        assert "tenants (3):" in shown.stdout
        one = manage(topology, "shard_status", "--tenant", f"{prefix}-3")
        assert re.findall(rf"^  ({prefix}-\d+)\s", one.stdout, re.M) == [f"{prefix}-3"]
        unknown = manage(topology, "shard_status", "--tenant", f"{prefix}-99")
        assert unknown.returncode == 1
        assert f"no tenant '{prefix}-99'" in unknown.stderr and "Traceback" not in unknown.stderr
    finally:
        Tenant.objects.using("default").filter(id__in=[t.id for t in made]).delete()
