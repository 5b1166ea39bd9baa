"""The 3-shard topology tests/test_cross_shard.py reads across: two sites per shard, 10,000
comments inserted in rounds so ids interleave across shards, and the helpers that compute what
the answers must be straight from every primary."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from deploy.topology import LocalTopology, ServiceProcess
from tests.client import Response, request
from tests.conftest import make_topology, wait_until_serving

PROJECT_DIR = Path(__file__).resolve().parent.parent
SHARDS = ("shard_0", "shard_1", "shard_2")
# Two sites per shard; the first of shard_0 moves to shard_2 between two pages.
SITES = {f"x{n}{letter}": shard for n, shard in enumerate(SHARDS) for letter in "ab"}
MOVING_SITE = "x0a"
TOTAL = 10_000
ROUNDS = 5  # rows are inserted shard after shard in rounds, so ids interleave across shards
# Authors of the seed: the plain ones fill up to TOTAL; the others are small sets per test.
SPECIAL = {"mover": 20, "gdpr": 15, "crashy": 60}  # rows per site per author

SEED = f"""
import json
from comments.service import get_or_create_thread
from shards.tenancy import tenant
from sites.service import create_site

placed = {{}}
for slug, shard in {SITES!r}.items():
    site = create_site(slug, slug.upper(), shard=shard)
    with tenant(site.entry):
        thread, _ = get_or_create_thread(f"https://{{slug}}.example/1", "first post")
    placed[slug] = [site.entry.id, thread.id, shard]
print("PLACED " + json.dumps(placed))
"""


def manage(topo: LocalTopology, *args: str, cwd: Path = PROJECT_DIR,
           timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(PROJECT_DIR / "manage.py"), *args], cwd=cwd,
        env=topo.service_env(), capture_output=True, text=True, timeout=timeout, check=False,
    )


def sql(topo: LocalTopology, alias: str, query: str, params: list[Any] | None = None) -> list:
    with topo.admin_connect(topo.node(alias)) as conn:
        return conn.execute(query, params or []).fetchall()


class Cluster:
    def __init__(self, topo: LocalTopology, service: ServiceProcess,
                 placed: dict[str, list]) -> None:
        self.topo, self.service = topo, service
        self.tenant_ids = {slug: p[0] for slug, p in placed.items()}
        self.slugs = {p[0]: slug for slug, p in placed.items()}

    def ops(self, method: str, path: str, headers: dict[str, str] | None = None,
            client_timeout: float = 60, **params: Any) -> Response:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        url = f"{self.service.url}/api/ops/comments{path}" + (f"?{query}" if query else "")
        return request(method, url, timeout=client_timeout,
                       headers={"X-Ops-Token": self.topo.ops_token(), **(headers or {})})

    def rows(self, where: str = "TRUE", params: list[Any] | None = None) -> list[tuple]:
        """(id, site, shard) of every comment matching `where`, straight from every primary,
        counting each tenant only on the shard the directory places it on."""
        placement = dict(sql(self.topo, "default", "SELECT id, shard FROM shards_tenant"))
        found = []
        for shard in SHARDS:
            for comment_id, tenant_id in sql(
                    self.topo, shard,
                    f"SELECT id, tenant_id FROM comments_comment WHERE {where}", params):
                if placement.get(tenant_id) == shard and tenant_id in self.slugs:
                    found.append((comment_id, self.slugs[tenant_id], shard))
        return found

    def walk(self, limit: int, between=None, **params: Any) -> list[dict]:
        """Every page of the listing; `between(pages_so_far)` runs before each next page."""
        items: list[dict] = []
        cursor = None
        pages = 0
        while True:
            answer = self.ops("GET", "", limit=limit, cursor=cursor, **params)
            assert answer.status == 200, answer.body
            assert answer.body["partial"] is False, answer.body
            assert len(answer.body["items"]) <= limit
            items += answer.body["items"]
            pages += 1
            cursor = answer.body["next_cursor"]
            if cursor is None:
                return items
            if between is not None:
                between(pages)


def start_cluster() -> Iterator[Cluster]:
    """The seeded topology and its service, destroyed when the generator is closed."""
    topo = make_topology("shardsvc-scatter-", shards=3, replicas=1)
    try:
        topo.up(service=False, migrate=True)
        seeded = manage(topo, "shell", "-c", SEED)
        assert seeded.returncode == 0, seeded.stdout + seeded.stderr
        placed = json.loads(seeded.stdout.split("PLACED ", 1)[1])
        plain = TOTAL - sum(SPECIAL.values()) * len(SITES)
        per_site = {slug: plain // len(SITES) + (1 if n < plain % len(SITES) else 0)
                    for n, slug in enumerate(SITES)}
        for round_ in range(ROUNDS):
            for slug, (tenant_id, thread_id, shard) in placed.items():
                authors = [(f"u{round_ % 7}", _share(per_site[slug], round_))]
                authors += [(name, _share(n, round_)) for name, n in SPECIAL.items()]
                with topo.admin_connect(topo.node(shard)) as conn:
                    for author, count in authors:
                        conn.execute(
                            "INSERT INTO comments_comment (tenant_id, thread_id, author, "
                            "author_name, body, created_at, deleted, score, depth) "
                            "SELECT %s, %s, %s, 'Name', 'body ' || g, now(), false, "
                            "(g %% 7) - 3, 0 FROM generate_series(1, %s) g",
                            [tenant_id, thread_id, author, count])
                    conn.execute("UPDATE comments_thread SET comment_count = comment_count + %s"
                                 " WHERE id = %s", [sum(n for _, n in authors), thread_id])
        service = topo.start_service(name="service")
        wait_until_serving(topo)
        yield Cluster(topo, service, placed)
    finally:
        topo.destroy()


def _share(total: int, round_: int) -> int:
    return total // ROUNDS + (1 if round_ < total % ROUNDS else 0)
