"""Cross-shard reads on a 3-shard topology: the ops listing (merge, cursor pages, a tenant moving
between two pages, a stopped shard), counts against direct SQL, moderation, and `user_data`
export / erase (also killed halfway and run again).

The pytest process's Django belongs to the session's 2-shard topology, so this module starts one
3-shard topology for all its tests (like tests/test_add_shard.py) and drives it as ops do: HTTP
to its service, `manage.py` subprocesses, and direct SQL on its servers for the expectations.
Tests run in file order and build on the seed: the pagination tests run before anything moves.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.client import get, request
from tests.conftest import wait_until_serving
from tests.cross_shard_cluster import (
    MOVING_SITE,
    SHARDS,
    SITES,
    SPECIAL,
    TOTAL,
    Cluster,
    manage,
    sql,
    start_cluster,
)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    yield from start_cluster()


def test_merged_order_equals_the_order_of_the_union(cluster: Cluster) -> None:
    union = sorted(cluster.rows(), reverse=True)
    assert len(union) == TOTAL
    assert {shard for _, _, shard in union} == set(SHARDS)
    newest = cluster.ops("GET", "", order="newest", limit=500)
    assert newest.status == 200, newest.body
    assert [(int(i["id"]), i["site"], i["shard"]) for i in newest.body["items"]] == union[:500]
    oldest = cluster.ops("GET", "", order="oldest", limit=300)
    assert [int(i["id"]) for i in oldest.body["items"]] == [r[0] for r in sorted(union)[:300]]
    mine = cluster.ops("GET", "", order="newest", author="gdpr", limit=500)
    expected = sorted(cluster.rows("author = %s", ["gdpr"]), reverse=True)
    assert [int(i["id"]) for i in mine.body["items"]] == [r[0] for r in expected]
    assert mine.body["next_cursor"] is None and mine.body["partial"] is False


def test_pages_of_37_over_10000_rows_return_every_row_exactly_once(cluster: Cluster) -> None:
    items = cluster.walk(37, order="newest")
    ids = [int(i["id"]) for i in items]
    assert len(ids) == TOTAL == len(set(ids))
    assert ids == [r[0] for r in sorted(cluster.rows(), reverse=True)]


def test_pages_stay_stable_while_rows_are_added(cluster: Cluster) -> None:
    """Rows written during a newest-first walk are newer than its cursor: the walk shows exactly
    the rows that existed when it began, once each, whichever shards the new rows land on."""
    expected = sorted(cluster.rows("author = %s", ["u2"]), reverse=True)
    assert len(expected) > 37 * 3

    writes: list[int] = []

    def write_everywhere(pages: int) -> None:
        writes.append(pages)
        for slug, shard in SITES.items():
            with cluster.topo.admin_connect(cluster.topo.node(shard)) as conn:
                conn.execute(
                    "INSERT INTO comments_comment (tenant_id, thread_id, author, author_name, "
                    "body, created_at, deleted, score, depth) SELECT tenant_id, id, 'u2', '', "
                    "'late', now(), false, 0, 0 FROM comments_thread WHERE tenant_id = %s",
                    [cluster.tenant_ids[slug]])

    items = cluster.walk(37, between=write_everywhere, order="newest", author="u2")
    assert [int(i["id"]) for i in items] == [r[0] for r in expected]
    added = len(cluster.rows("author = %s", ["u2"])) - len(expected)
    assert writes and added == len(SITES) * len(writes)
    # Rows added while walking oldest first come at the end, after every earlier row, once.
    before = sorted(cluster.rows("author = %s", ["u2"]))
    oldest = cluster.walk(37, between=write_everywhere, order="oldest", author="u2")
    ids = [int(i["id"]) for i in oldest]
    assert len(ids) == len(set(ids)) and ids[:len(before)] == [r[0] for r in before]
    assert ids == sorted(ids)


def test_a_cursor_of_another_query_or_a_forged_one_is_refused(cluster: Cluster) -> None:
    first = cluster.ops("GET", "", author="gdpr", limit=5)
    cursor = first.body["next_cursor"]
    other = cluster.ops("GET", "", author="mover", limit=5, cursor=cursor)
    assert other.status == 400 and "other filters" in other.body["message"]
    forged = cluster.ops("GET", "", author="gdpr", limit=5, cursor=cursor[:-3] + "abc")
    assert forged.status == 400 and forged.body["error"] == "bad_cursor"
    unauthorized = request("GET", f"{cluster.service.url}/api/ops/comments")
    assert unauthorized.status == 401
    nul = cluster.ops("GET", "", author="a\x00b")
    assert nul.status == 422 and "NUL" in nul.body["message"]


def test_a_tenant_moved_between_two_pages_is_read_once(cluster: Cluster) -> None:
    """The move is stopped twice on its way (move_tenant's fault injection) so pages are read
    while both shards hold the site's rows: first with the copy made and the directory still on
    the source, then flipped to the target with the source rows not yet deleted."""
    expected = sorted(cluster.rows("author = %s", ["mover"]), reverse=True)
    moved = [r for r in expected if r[1] == MOVING_SITE]
    assert moved and {r[2] for r in moved} == {"shard_0"}
    tenant_id = cluster.tenant_ids[MOVING_SITE]

    def on(shard: str) -> int:
        return sql(cluster.topo, shard, "SELECT count(*) FROM comments_comment WHERE "
                   "tenant_id = %s", [tenant_id])[0][0]

    def placed() -> str:
        return sql(cluster.topo, "default", "SELECT shard FROM shards_tenant WHERE id = %s",
                   [tenant_id])[0][0]

    def move(*extra: str) -> subprocess.CompletedProcess:
        return manage(cluster.topo, "move_tenant", MOVING_SITE, "shard_2", "--grace", "0.5",
                      *extra)

    def counted() -> int:
        counts = cluster.ops("GET", "/counts", by="site", author="mover").body["counts"]
        return counts[MOVING_SITE]

    def step(pages: int) -> None:
        if pages in (2, 3):
            # Both shards hold the site's rows now: counted once, on the shard it is placed on.
            assert counted() == SPECIAL["mover"]
        if pages == 1:
            assert move("--crash-at", "cutover").returncode == 70
            assert (placed(), on("shard_2")) == ("shard_0", on("shard_0"))  # copied, not flipped
        elif pages == 2:
            assert move("--crash-at", "cleanup").returncode == 70
            assert (placed(), on("shard_0")) == ("shard_2", on("shard_2"))  # flipped, not cleaned
        elif pages == 3:
            done = move()
            assert done.returncode == 0, done.stdout + done.stderr
            assert (placed(), on("shard_0")) == ("shard_2", 0)

    items = cluster.walk(20, between=step, order="newest", author="mover")
    ids = [int(i["id"]) for i in items]
    assert len(ids) == len(set(ids)) == len(expected)
    assert ids == [r[0] for r in expected]
    # The moved site's rows came from both shards, on either side of the flip.
    shards_of_moved = Counter(i["shard"] for i in items if i["site"] == MOVING_SITE)
    assert set(shards_of_moved) == {"shard_0", "shard_2"}, shards_of_moved


def test_counts_equal_a_direct_count_over_every_shard(cluster: Cluster) -> None:
    direct: Counter[str] = Counter()
    authors: Counter[str] = Counter()
    for shard in SHARDS:
        for tenant_id, count in sql(cluster.topo, shard, "SELECT tenant_id, count(*) FROM "
                                    "comments_comment GROUP BY tenant_id"):
            direct[cluster.slugs[tenant_id]] += count
        for author, count in sql(cluster.topo, shard, "SELECT author, count(*) FROM "
                                 "comments_comment GROUP BY author"):
            authors[author] += count
    by_site = cluster.ops("GET", "/counts", by="site")
    assert by_site.status == 200, by_site.body
    assert by_site.body["counts"] == dict(direct)
    assert by_site.body["total"] == sum(direct.values()) > TOTAL  # the seed and rows added since
    by_author = cluster.ops("GET", "/counts", by="author")
    assert by_author.body["counts"] == dict(authors)
    one = cluster.ops("GET", "/counts", by="site", author="gdpr")
    assert one.body["counts"] == {slug: SPECIAL["gdpr"] for slug in SITES}


AGGREGATES = """
import json
from comments.models import Comment
from routers.scatter_queries import aggregate

answers = {}
for function, field in (("count", "id"), ("sum", "score"), ("min", "id"), ("max", "id")):
    result = aggregate(Comment.unscoped.filter(author="mover"), function=function, field=field,
                       group_by="tenant_id", primary=True, allow_partial=False)
    answers[function] = {str(k): v for k, v in result.values.items()}
    answers[function + "_all"] = aggregate(Comment.unscoped.all(), function=function,
                                           field=field, primary=True).values[None]
print("AGGREGATES " + json.dumps(answers))
"""


def test_the_library_aggregates_equal_direct_sql(cluster: Cluster) -> None:
    ran = manage(cluster.topo, "shell", "-c", AGGREGATES)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    answers = json.loads(ran.stdout.split("AGGREGATES ", 1)[1])
    parts = [row for shard in SHARDS for row in sql(
        cluster.topo, shard, "SELECT tenant_id, count(id), sum(score), min(id), max(id) FROM "
        "comments_comment WHERE author = 'mover' GROUP BY tenant_id")]
    totals = [row for shard in SHARDS for row in sql(
        cluster.topo, shard, "SELECT count(id), sum(score), min(id), max(id) FROM "
        "comments_comment")]
    assert any(r[2] for r in parts), "the seed's scores must not sum to zero everywhere"
    assert answers["count"] == {str(t): n for t, n, _, _, _ in parts}
    assert answers["sum"] == {str(t): s for t, _, s, _, _ in parts}
    assert answers["min"] == {str(t): m for t, _, _, m, _ in parts}
    assert answers["max"] == {str(t): m for t, _, _, _, m in parts}
    assert answers["count_all"] == sum(r[0] for r in totals)
    assert answers["sum_all"] == sum(r[1] for r in totals)
    assert answers["min_all"] == min(r[2] for r in totals)
    assert answers["max_all"] == max(r[3] for r in totals)


def test_moderation_soft_deletes_the_comment_on_its_sites_shard(cluster: Cluster) -> None:
    target = cluster.ops("GET", "", author="u3", limit=1).body["items"][0]
    done = cluster.ops("DELETE", f"/{target['site']}/{target['id']}")
    assert done.status == 200, done.body
    assert done.body == {"id": target["id"], "site": target["site"], "deleted": True,
                         "changed": True}
    assert sql(cluster.topo, target["shard"], "SELECT deleted, body FROM comments_comment "
               "WHERE id = %s", [int(target["id"])])[0][0] is True
    again = cluster.ops("DELETE", f"/{target['site']}/{target['id']}")
    assert again.status == 200 and again.body["changed"] is False
    # The write's causal token, handed back, makes the cross-shard read see it (read your
    # writes, as on one shard): a replica that has not replayed it is skipped.
    token = {"X-Causal-Token": done.headers["X-Causal-Token"]}
    shown = cluster.ops("GET", "", headers=token, author="u3", limit=1).body["items"][0]
    assert (shown["id"], shown["deleted"], shown["body"]) == (target["id"], True, "")
    other_site = next(s for s in SITES if s != target["site"])
    assert cluster.ops("DELETE", f"/{other_site}/{target['id']}").status == 404
    assert cluster.ops("DELETE", f"/no-such-site/{target['id']}").status == 404


def test_export_then_erase_then_export_again_is_empty(cluster: Cluster, tmp_path: Path) -> None:
    expected = Counter(site for _, site, _ in cluster.rows("author = %s", ["gdpr"]))
    assert set(expected) == set(SITES)
    # gdpr upvotes one comment of someone else on each shard (as the vote API writes it).
    voted = []
    for shard in SHARDS:
        [(comment_id, tenant_id, score)] = sql(
            cluster.topo, shard, "SELECT id, tenant_id, score FROM comments_comment "
            "WHERE author <> 'gdpr' AND NOT deleted ORDER BY id LIMIT 1")
        sql(cluster.topo, shard, "WITH v AS (INSERT INTO comments_vote (tenant_id, comment_id, "
            "voter, value, created_at) VALUES (%s, %s, 'gdpr', 1, now()) RETURNING comment_id) "
            "UPDATE comments_comment SET score = score + 1 WHERE id IN (SELECT comment_id FROM v) "
            "RETURNING id", [tenant_id, comment_id])
        voted.append((shard, comment_id, score))
    exported = manage(cluster.topo, "user_data", "gdpr", "--export", str(tmp_path / "a.json"))
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "[3/3 shard_2]" in exported.stdout
    data = json.loads((tmp_path / "a.json").read_text())
    assert data["count"] == sum(expected.values()) and data["sites"] == dict(expected)
    assert {c["author"] for c in data["comments"]} == {"gdpr"}
    assert [c["id"] for c in data["comments"]] == sorted(c["id"] for c in data["comments"])
    assert {(v["shard"], v["comment_id"], v["value"]) for v in data["votes"]} == {
        (shard, comment_id, 1) for shard, comment_id, _ in voted}

    erased = manage(cluster.topo, "user_data", "gdpr", "--erase", cwd=tmp_path)
    assert erased.returncode == 0, erased.stdout + erased.stderr
    assert _report(erased) == dict(expected)
    # Their votes are gone, and so is what they added to others' scores.
    for shard, comment_id, score in voted:
        assert sql(cluster.topo, shard, "SELECT count(*) FROM comments_vote WHERE voter = 'gdpr'"
                   ) == [(0,)]
        assert sql(cluster.topo, shard, "SELECT score FROM comments_comment WHERE id = %s",
                   [comment_id]) == [(score,)]
    again = manage(cluster.topo, "user_data", "gdpr", "--export", str(tmp_path / "b.json"))
    assert again.returncode == 0, again.stdout + again.stderr
    assert json.loads((tmp_path / "b.json").read_text())["count"] == 0
    # Idempotent: a second run erases nothing more and reports the same job.
    rerun = manage(cluster.topo, "user_data", "gdpr", "--erase", cwd=tmp_path)
    assert rerun.returncode == 0 and _report(rerun) == dict(expected)
    assert "resuming erasure job" in rerun.stdout


def test_an_erasure_killed_halfway_finishes_when_run_again(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    expected = Counter(site for _, site, _ in cluster.rows("author = %s", ["crashy"]))
    total = sum(expected.values())
    progress = str(tmp_path / "erase.json")
    crashed = manage(cluster.topo, "user_data", "crashy", "--erase", "--progress", progress,
                     "--crash-after", str(total // 2))
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr
    left = len(cluster.rows("author = %s", ["crashy"]))
    assert 0 < left < total
    finished = manage(cluster.topo, "user_data", "crashy", "--erase", "--progress", progress)
    assert finished.returncode == 0, finished.stdout + finished.stderr
    assert "resuming erasure job" in finished.stdout
    assert _report(finished) == dict(expected)
    assert cluster.rows("author = %s", ["crashy"]) == []
    # Blanked, and the threads' visible counts went down by what was erased.
    for shard in SHARDS:
        assert sql(cluster.topo, shard, "SELECT count(*) FROM comments_comment WHERE author "
                   "LIKE 'erased:%%' AND (body <> '' OR author_name <> '' OR NOT deleted)"
                   ) == [(0,)]


def test_a_stopped_shard_gives_a_partial_answer_naming_it(cluster: Cluster) -> None:
    for alias in ("shard_1", "shard_1_replica_1"):
        cluster.topo.stop_node(alias, mode="immediate")
    try:
        # Far above the 1 s asked for, far below PgBouncer's wait for a server that is down: an
        # answer at all shows the deadline held.
        partial = cluster.ops("GET", "", limit=50, timeout=1, client_timeout=15)
        assert partial.status == 200, partial.body
        assert partial.body["partial"] is True
        assert [f["shard"] for f in partial.body["failed_shards"]] == ["shard_1"]
        assert partial.body["failed_shards"][0]["reason"] in {"timeout", "unavailable"}
        assert partial.body["items"] and {i["shard"] for i in partial.body["items"]} <= {
            "shard_0", "shard_2"}
        refused = cluster.ops("GET", "", limit=50, timeout=1, partial="fail", client_timeout=15)
        assert refused.status == 503, refused.body
        assert refused.body["error"] == "shards_unavailable"
        assert "shard_1" in refused.body["message"]
        assert [f["shard"] for f in refused.body["failed_shards"]] == ["shard_1"]
        counts = cluster.ops("GET", "/counts", timeout=1, client_timeout=15)
        assert counts.body["partial"] is True
        assert not {s for s, shard in SITES.items() if shard == "shard_1"} & set(
            counts.body["counts"])
        metrics = get(f"{cluster.service.url}/metrics").body
        assert _sample(metrics, "shardsvc_scatter_total", kind="page", outcome="partial") >= 1
        assert _sample(metrics, "shardsvc_scatter_total", kind="page", outcome="failed") >= 1
        assert _sample(metrics, "shardsvc_scatter_total", kind="aggregate",
                       outcome="partial") >= 1
        assert _sample(metrics, "shardsvc_scatter_shard_failures_total", shard="shard_1") >= 3
    finally:
        for alias in ("shard_1", "shard_1_replica_1"):
            cluster.topo.start_node(alias)
        wait_until_serving(cluster.topo)


def _sample(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        series, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


def _report(result: subprocess.CompletedProcess) -> dict[str, int]:
    return json.loads(result.stdout.split("REPORT ", 1)[1])
