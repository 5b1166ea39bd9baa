"""manage.py seed_demo against the real topology: skew, consistency, keys that work, re-runs."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from deploy.topology import PROJECT_DIR, LocalTopology
from tests.api_client import SiteClient
from tests.client import wait_until

pytestmark = pytest.mark.usefixtures("django_db")

SITES = 5
COMMENTS = 20_000
THREADS = 8
MORE = 2_000


def seed(topology: LocalTopology, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", "seed_demo", *args],
        cwd=PROJECT_DIR, env=topology.service_env(), capture_output=True, text=True,
        timeout=180, check=False,
    )


def shard_rows(admin, shard: str, tenant_ids: list[int], sql: str) -> list[tuple]:
    return admin(shard).execute(sql, [tenant_ids]).fetchall()


def per_tenant_counts(admin, shard: str, tenant_ids: list[int]) -> dict[int, int]:
    return dict(shard_rows(admin, shard, tenant_ids,
                           "SELECT tenant_id, count(*) FROM comments_comment "
                           "WHERE tenant_id = ANY(%s) GROUP BY tenant_id"))


def wait_replicated(admin, shards: list[str], timeout: float = 30.0) -> None:
    """Seeding writes behind the API's back (no causal token): let replicas replay it before
    reading through the service."""
    for shard in shards:
        target = admin(shard).execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        replica = admin(f"{shard}_replica_1")
        wait_until(lambda replica=replica, target=target: replica.execute(
            "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [target]).fetchone()[0],
            timeout=timeout, interval=0.05, what=f"{shard}_replica_1 to replay the seed")


def printed_shard_totals(stdout: str) -> dict[str, int]:
    """COMMENTS per shard from the command's summary table."""
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("SHARD "))
    totals = {}
    for line in lines[header + 1:]:
        cells = line.split()
        if not cells or not cells[0].startswith("shard_"):
            break
        totals[cells[0]] = int(cells[3].replace(",", ""))
    return totals


def check_consistency(admin, shards: list[str], tenant_ids: list[int]) -> None:
    for shard in shards:
        wrong_counts = shard_rows(admin, shard, tenant_ids, """
            SELECT t.id, t.comment_count, count(c.id) FROM comments_thread t
            LEFT JOIN comments_comment c ON c.thread_id = t.id AND NOT c.deleted
            WHERE t.tenant_id = ANY(%s) GROUP BY t.id HAVING t.comment_count <> count(c.id)""")
        assert wrong_counts == [], f"{shard}: comment_count differs from the real count"
        bad_replies = shard_rows(admin, shard, tenant_ids, """
            SELECT c.id FROM comments_comment c
            LEFT JOIN comments_comment p ON p.id = c.parent_id
            WHERE c.tenant_id = ANY(%s) AND c.parent_id IS NOT NULL AND (
                p.id IS NULL OR p.thread_id <> c.thread_id OR p.tenant_id <> c.tenant_id
                OR c.depth <> p.depth + 1 OR c.root_id <> coalesce(p.root_id, p.id)
                OR p.id >= c.id)""")
        assert bad_replies == [], f"{shard}: replies inconsistent with their parents"
        bad_roots = shard_rows(admin, shard, tenant_ids, """
            SELECT id FROM comments_comment WHERE tenant_id = ANY(%s)
            AND ((parent_id IS NULL) <> (root_id IS NULL) OR (parent_id IS NULL AND depth <> 0))
            """)
        assert bad_roots == [], f"{shard}: top-level comments with a root or a depth"
        bad_scores = shard_rows(admin, shard, tenant_ids, """
            SELECT c.id FROM comments_comment c
            LEFT JOIN (SELECT comment_id, sum(value) AS s FROM comments_vote GROUP BY 1) v
              ON v.comment_id = c.id
            WHERE c.tenant_id = ANY(%s) AND c.score <> coalesce(v.s, 0)""")
        assert bad_scores == [], f"{shard}: scores differ from the sum of votes"


def test_seed_demo_makes_skewed_consistent_data_the_api_serves(
    topology: LocalTopology, service, admin, tmp_path: Path,
) -> None:
    prefix = f"seed-{uuid.uuid4().hex[:8]}"
    keys = tmp_path / "keys.json"
    run = seed(topology, "--sites", str(SITES), "--comments", str(COMMENTS),
               "--threads-per-site", str(THREADS), "--prefix", prefix, "--keys-out", str(keys))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"Seeded {COMMENTS:,} comments" in run.stdout
    assert "sk_" not in run.stdout  # keys went to the file, not the terminal
    assert keys.stat().st_mode & 0o777 == 0o600
    sites = json.loads(keys.read_text())["sites"]
    assert [s["slug"] for s in sites] == [f"{prefix}-{n}" for n in range(1, SITES + 1)]
    assert all(s["created"] and s["api_key"].startswith("sk_") for s in sites)
    assert sum(s["comments"] for s in sites) == COMMENTS

    # Skew: Zipf over sites, the first the largest, far larger than the last.
    counts = [s["comments"] for s in sites]
    assert counts == sorted(counts, reverse=True)
    assert counts[0] >= 3 * counts[-1], counts
    assert counts[0] > COMMENTS / SITES * 1.5
    assert all(len(s["threads"]) == THREADS for s in sites)
    hot = sites[0]["threads"]
    assert max(t["comments"] for t in hot) >= 3 * min(t["comments"] for t in hot)

    # Each site's rows are on its shard, and only there; totals per shard match.
    shards = sorted({s["shard"] for s in sites} | {"shard_0", "shard_1"})
    tenant_ids = [s["tenant_id"] for s in sites]
    printed = printed_shard_totals(run.stdout)
    for shard in shards:
        found = per_tenant_counts(admin, shard, tenant_ids)
        expected = {s["tenant_id"]: s["comments"] for s in sites if s["shard"] == shard}
        assert found == {t: n for t, n in expected.items() if n}, shard
        assert sum(found.values()) == printed.get(shard, 0), (shard, printed)
        votes = dict(shard_rows(admin, shard, tenant_ids,
                                "SELECT tenant_id, count(*) FROM comments_vote "
                                "WHERE tenant_id = ANY(%s) GROUP BY 1"))
        assert votes == {s["tenant_id"]: s["votes"] for s in sites
                         if s["shard"] == shard and s["votes"]}
    assert sum(s["replies"] for s in sites) > COMMENTS * 0.15
    assert sum(s["votes"] for s in sites) > COMMENTS * 0.2
    check_consistency(admin, shards, tenant_ids)

    # The printed key works: the API lists a seeded thread with its reply trees.
    wait_replicated(admin, shards)
    top = sites[0]
    thread = max(top["threads"], key=lambda t: t["comments"])
    client = SiteClient(f"{service.url}/api", top["slug"], top["api_key"], top["shard"])
    page = client.call("GET", f"/threads/{thread['id']}/comments?order=oldest&limit=50")
    assert page.status == 200, page.body
    assert len(page.body["items"]) == 50
    assert page.body["next_cursor"]
    assert any(item["replies"] for item in page.body["items"])
    assert all(item["thread_id"] == str(thread["id"]) for item in page.body["items"])
    info = client.call("GET", f"/threads/{thread['id']}")
    assert info.status == 200
    assert info.body["comment_count"] == thread["comments"]
    # Another site's key sees nothing of it.
    other = SiteClient(f"{service.url}/api", top["slug"], sites[1]["api_key"], top["shard"])
    assert other.call("GET", f"/threads/{thread['id']}/comments").status == 404

    newest = client.call("GET", f"/threads/{thread['id']}/comments?limit=5")
    assert newest.status == 200
    assert client.call("GET", f"/threads/{thread['id']}/comments?limit=5").headers.get(
        "X-Cache") == "hit"

    # Running it again reuses the sites and threads, adds comments, keeps every count right.
    again = seed(topology, "--sites", str(SITES), "--comments", str(MORE),
                 "--threads-per-site", str(THREADS), "--prefix", prefix, "--seed", "7")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "0 created, 5 reused" in again.stdout
    assert "existing site: key shown when it was created" in again.stdout
    total = 0
    for shard in shards:
        total += sum(per_tenant_counts(admin, shard, tenant_ids).values())
    assert total == COMMENTS + MORE
    check_consistency(admin, shards, tenant_ids)
    wait_replicated(admin, shards)
    info = client.call("GET", f"/threads/{thread['id']}")
    assert info.body["comment_count"] > thread["comments"]
    # The seeder raised the thread's cache mark: the cached newest page is not served again.
    after = client.call("GET", f"/threads/{thread['id']}/comments?limit=5")
    assert after.status == 200
    assert after.headers.get("X-Cache") != "hit"
    assert int(after.body["items"][0]["id"]) > int(newest.body["items"][0]["id"])


@pytest.mark.parametrize(("args", "message"), [
    (["--sites", "0", "--comments", "10"], "--sites must be between 1"),
    (["--sites", "2", "--comments", "-1"], "--comments must be between 0"),
    (["--sites", "2", "--comments", "10", "--threads-per-site", "0"], "--threads-per-site"),
    (["--sites", "2", "--comments", "10", "--zipf", "-1"], "--zipf must be between 0"),
    (["--sites", "2", "--comments", "10", "--replies", "1.5"], "--replies must be a share"),
    (["--sites", "2", "--comments", "10", "--batch", "5"], "--batch must be between"),
    (["--sites", "2", "--comments", "10", "--prefix", "Bad_Prefix"], "does not make valid"),
    (["--sites", "2", "--comments", "10", "--prefix", "x" * 62], "does not make valid"),
    (["--sites", "2", "--comments", "10", "--keys-out", "/nonexistent/dir/keys.json"],
     "does not exist"),
    (["--sites", "many", "--comments", "10"], "invalid int value"),
    (["--comments", "10"], "--sites"),
])
def test_seed_demo_refuses_bad_arguments(args: list[str], message: str) -> None:
    with pytest.raises(CommandError, match=message):
        call_command("seed_demo", *args)
