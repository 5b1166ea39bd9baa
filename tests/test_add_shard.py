"""Adding a shard, as ops do it: a running two-shard topology with sites and comments gets a
third shard (`up` with --shards 3: topology file, new servers, PgBouncer reload, migrate), then
`rebalance --apply` moves tenants onto it, online, and `shard_status` shows it holding them,
with no replication object left behind anywhere.

The pytest process's Django belongs to the session topology, so this module starts its own and
drives it the way ops do: `manage.py` subprocesses with the topology's environment, plus direct
SQL on its servers for the assertions."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

import pytest

from deploy.processes import read_pid
from deploy.topology import LocalTopology
from tests.client import get, wait_until
from tests.commands import manage
from tests.conftest import make_topology

pytestmark = pytest.mark.slow

# (slug, comments): placement alternates shard_0, shard_1 (least loaded, ties in topology order)
SITES = [("grow-a", 30), ("grow-b", 30), ("grow-c", 20), ("grow-d", 20), ("grow-e", 10),
         ("grow-f", 10)]

SEED = f"""
import json
from comments.service import get_or_create_thread, post_comment
from shards.tenancy import tenant
from sites.service import create_site

placed = {{}}
for slug, count in {SITES!r}:
    site = create_site(slug, slug.upper())
    with tenant(site.entry):
        thread, _ = get_or_create_thread(f"https://{{slug}}.example/1", "first post")
        for n in range(count):
            post_comment(thread.id, author="u1", author_name="", body=f"comment {{n}}",
                         parent_id=None)
    placed[slug] = [site.entry.id, site.entry.shard]
print("PLACED " + json.dumps(placed))
"""


def rows(topo: LocalTopology, alias: str, sql: str, params: list[Any] | None = None) -> list:
    with topo.admin_connect(topo.node(alias)) as conn:
        return conn.execute(sql, params or []).fetchall()


def tenant_rows(topo: LocalTopology, shard: str, tenant_id: int) -> int:
    return sum(rows(topo, shard, f"SELECT count(*) FROM {table} WHERE tenant_id = %s",
                    [tenant_id])[0][0]
               for table in ("comments_thread", "comments_comment", "comments_vote"))


def test_a_third_shard_is_added_and_rebalance_moves_tenants_onto_it() -> None:
    topo = make_topology("shardsvc-grow-", shards=2, replicas=1, start_port=31400)
    grown = LocalTopology(replace(topo.layout, shards=3), echo=topo.echo)
    try:
        topo.up(service=False, migrate=True)
        seeded = manage(topo, "shell", "-c", SEED)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        placed = json.loads(seeded.stdout.split("PLACED ", 1)[1])
        assert {shard for _id, shard in placed.values()} == {"shard_0", "shard_1"}
        sizes = {slug: tenant_rows(topo, shard, tenant_id)
                 for slug, (tenant_id, shard) in placed.items()}
        assert sizes["grow-a"] == 31  # the thread and its comments

        service = topo.start_service(name="service")
        old_master = read_pid(service.pidfile)
        before = get(f"{service.url}/readyz/shards").body["databases"]
        assert "shard_2" not in before

        # Grow: the same layout with one more shard; `up` adds it to the running topology, and
        # the running service's workers follow the new topology file without a restart.
        grown.up(service=False, migrate=True)
        assert "shard_2" in grown.layout.topology_file.read_text()
        assert read_pid(service.pidfile) == old_master
        wait_until(lambda: all("shard_2" in get(f"{service.url}/readyz/shards").body["databases"]
                               for _ in range(6)), timeout=15, what="the workers know shard_2")
        after = get(f"{service.url}/readyz/shards")
        assert after.status == 200 and after.body["databases"]["shard_2"]["writable"] is True
        assert rows(grown, "default", "SELECT accepts_tenants FROM shards_shard "
                                      "WHERE name = 'shard_2'") == [(True,)]
        assert rows(grown, "shard_2_replica_1", "SELECT pg_is_in_recovery()") == [(True,)]

        applied = manage(grown, "rebalance", "--apply", "--pause", "0", "--grace", "0",
                         timeout=240)
        out = applied.stdout
        print(out)  # shown when the test fails (or with -s)
        assert applied.returncode == 0, out + applied.stderr
        assert re.search(r"shard_0 -> shard_2", out) and re.search(r"shard_1 -> shard_2", out)
        assert re.search(r"rebalance done: (\d+) of \1 move\(s\)", out), out
        assert "measured after the moves:" in out

        now = dict(rows(grown, "default", "SELECT slug, shard FROM shards_tenant"))
        moved = [slug for slug in placed if now[slug] == "shard_2"]
        assert moved, now
        for slug in moved:
            tenant_id, source = placed[slug]
            assert tenant_rows(grown, "shard_2", tenant_id) == sizes[slug]
            assert tenant_rows(grown, source, tenant_id) == 0  # cleaned up on the source
        per_shard = {s: sum(sizes[slug] for slug in placed if now[slug] == s)
                     for s in ("shard_0", "shard_1", "shard_2")}
        assert max(per_shard.values()) - min(per_shard.values()) < 63, per_shard
        jobs = rows(grown, "default", "SELECT state, verified, target FROM shards_movejob")
        assert jobs and all(job == ("done", True, "shard_2") for job in jobs), jobs

        status = manage(grown, "shard_status", "--tenants")
        print(status.stdout)
        assert status.returncode == 0, status.stdout + status.stderr
        row = re.search(r"^  shard_2\s+yes\s+shard_2\s+shard_2_replica_1\s+(\d+)\s+(\d+)",
                        status.stdout, re.M)
        assert row and int(row.group(1)) == len(moved), status.stdout
        assert int(row.group(2)) == sum(sizes[slug] for slug in moved)
        assert re.search(r"^  shard_2_replica_1\s+replica\s+shard_2\s+streaming\s+\d+\.\d{3} s",
                         status.stdout, re.M), status.stdout
        for slug in moved:
            assert re.search(rf"^  {slug}\s+\d+\s+shard_2\s+active", status.stdout, re.M)
        assert "leaked replication objects: none" in status.stdout

        for shard in ("shard_0", "shard_1", "shard_2"):
            assert rows(grown, shard, "SELECT count(*) FROM pg_replication_slots "
                                      "WHERE slot_type = 'logical'") == [(0,)], shard
            assert rows(grown, shard, "SELECT count(*) FROM pg_publication") == [(0,)], shard
            assert rows(grown, shard, "SELECT count(*) FROM pg_subscription") == [(0,)], shard
            assert rows(grown, shard, "SELECT count(*) FROM shardsvc_fence") == [(0,)], shard

        replan = manage(grown, "rebalance")
        assert replan.returncode == 0, replan.stdout + replan.stderr
        assert "no moves" in replan.stdout
    finally:
        grown.destroy()  # every server of the grown layout, started or not
