"""Benchmark: a merged "newest 50 across 3 shards" page, beside one shard's same query, and the
cost of one slow shard.

    .venv/bin/python -m tests.benchmarks.bench_scatter [--rows 100000] [--iterations 300]

Starts its own throwaway 3-shard topology (one replica each; ports from 32600 or
SHARDSVC_TEST_BASE_PORT + 2600), loads `--rows` comments per shard (two sites each, ids
interleaved across shards), and times, in this process (threads, as `manage.py` runs them):

- one shard: the query each shard runs for a page (its tenants' newest 51 rows) on that shard's
  replica, through PgBouncer;
- merged: `routers.scatter_queries.query_page(..., order_by=["-id"], limit=50)`, i.e. the
  placement read, three shards at once, the k-way merge and a signed cursor;
- merged with shard_1 slowed by 200 ms, with a per-shard timeout of 1 s (the page waits for it)
  and of 0.1 s (the page comes back partial at the deadline). The delay is real: the query
  carries a test-only condition that runs `pg_sleep(0.2)` once, on shard_1's server only.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable

from tests.conftest import make_topology

SITES_PER_SHARD = 2
SLOW_SHARD = "shard_1"
DELAY = 0.2


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def timed(function: Callable[[], object], iterations: int) -> tuple[list[float], list[object]]:
    seconds, results = [], []
    for _ in range(iterations):
        started = time.perf_counter()
        results.append(function())
        seconds.append(time.perf_counter() - started)
    return seconds, results


def row(name: str, seconds: list[float], extra: str = "") -> str:
    ms = [s * 1000 for s in seconds]
    return (f"{name:<44} {statistics.median(ms):>8.2f} {percentile(ms, 0.95):>8.2f} "
            f"{percentile(ms, 0.99):>8.2f} {max(ms):>8.2f}  {extra}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="comments per shard")
    parser.add_argument("--iterations", type=int, default=300)
    args = parser.parse_args()

    base = int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "30000")) + 2600
    topology = make_topology("shardsvc-bench-scatter-", shards=3, replicas=1, start_port=base)
    try:
        topology.up(service=False, migrate=True)
        os.environ.update(topology.settings_env())
        import django

        django.setup()
        load(topology, args.rows)
        from tests.conftest import wait_until_serving

        wait_until_serving(topology)
        time.sleep(2)  # replica health checks see the replicas caught up
        report(args.iterations)
    finally:
        from django.db import connections

        connections.close_all()
        topology.destroy()
    return 0


def load(topology, rows: int) -> None:
    from comments.service import get_or_create_thread
    from shards.tenancy import tenant
    from sites.service import create_site

    started = time.monotonic()
    sites = []
    for shard in ("shard_0", "shard_1", "shard_2"):
        for n in range(SITES_PER_SHARD):
            site = create_site(f"bench-{shard.replace('_', '')}-{n}", "bench", shard=shard)
            with tenant(site.entry):
                thread, _ = get_or_create_thread("https://bench.example/1", "bench")
            sites.append((site.entry.id, thread.id, shard))
    rounds = 10
    per_round = rows // SITES_PER_SHARD // rounds
    for _ in range(rounds):  # shard after shard, round after round: ids interleave
        for tenant_id, thread_id, shard in sites:
            with topology.admin_connect(topology.node(shard)) as conn:
                conn.execute(
                    "INSERT INTO comments_comment (tenant_id, thread_id, author, author_name, "
                    "body, created_at, deleted, score, depth) SELECT %s, %s, 'u' || (g %% 500), "
                    "'User', 'comment ' || g, now(), false, 0, 0 FROM generate_series(1, %s) g",
                    [tenant_id, thread_id, per_round])
    for shard in ("shard_0", "shard_1", "shard_2"):
        with topology.admin_connect(topology.node(shard)) as conn:
            conn.execute("ANALYZE comments_comment")
    print(f"loaded {per_round * rounds * SITES_PER_SHARD:,} comments per shard in "
          f"{time.monotonic() - started:.1f} s", flush=True)


def report(iterations: int) -> None:
    from comments.models import Comment
    from routers.router import choose_read_alias
    from routers.scatter import read_placement
    from routers.scatter_queries import query_page

    placement = read_placement()
    owned = list(placement.tenants["shard_0"])
    alias = choose_read_alias("shard_0")

    def one_shard() -> object:
        return list(Comment.unscoped.using(alias).filter(tenant_id__in=owned)
                    .order_by("-id")[:51])

    def merged(queryset=None, timeout: float = 2.0) -> object:
        page = query_page(queryset if queryset is not None else Comment.unscoped.all(),
                          order_by=["-id"], limit=50, timeout=timeout, deadline=timeout + 0.5)
        assert len(page.items) == 50
        return page

    # A test-only condition: an uncorrelated subquery (run once per query, as an InitPlan) that
    # sleeps on the server whose global id generator belongs to SLOW_SHARD, and nowhere else.
    slowed = Comment.unscoped.extra(where=[
        "(SELECT 1 FROM shardsvc_generator, pg_sleep(CASE WHEN shard_name = %s THEN %s "
        "ELSE 0 END)) = 1"], params=[SLOW_SHARD, DELAY])

    aliases = {shard: choose_read_alias(shard) for shard in placement.tenants}

    def one_after_another() -> object:
        return [list(Comment.unscoped.using(aliases[shard]).filter(tenant_id__in=list(tenants))
                     .order_by("-id")[:51]) for shard, tenants in placement.tenants.items()]

    for warm in (one_shard, merged):
        timed(warm, 20)
    print(f"\n{iterations} iterations each; ms         {'p50':>8} {'p95':>8} {'p99':>8} "
          f"{'max':>8}")
    single, _ = timed(one_shard, iterations)
    print(row(f"one shard ({alias}), newest 51", single))
    merged_s, _ = timed(merged, iterations)
    print(row("merged, newest 50 across 3 shards", merged_s,
              f"x{statistics.median(merged_s) / statistics.median(single):.2f} of one shard"))
    sequential, _ = timed(one_after_another, iterations)
    print(row("  for scale: the 3 shard queries in a row", sequential))
    placement_s, _ = timed(read_placement, iterations)
    print(row("  part of it: placement read (control)", placement_s))
    # Each slow-shard page below logs the cut connection and the timed-out shard: expected here.
    for name in ("shardsvc.scatter", "project.pgpool"):
        logging.getLogger(name).setLevel(logging.ERROR)
    slow_iterations = max(20, iterations // 10)
    waited, pages = timed(lambda: merged(slowed, timeout=1.0), slow_iterations)
    partial = sum(1 for p in pages if p.partial)  # type: ignore[attr-defined]
    print(row(f"{SLOW_SHARD} +200 ms, timeout 1 s", waited, f"partial {partial}/{len(pages)}"))
    cut, pages = timed(lambda: merged(slowed, timeout=0.1), slow_iterations)
    partial = sum(1 for p in pages if p.partial)  # type: ignore[attr-defined]
    failed = {f.shard for p in pages for f in p.failures}  # type: ignore[attr-defined]
    print(row(f"{SLOW_SHARD} +200 ms, timeout 0.1 s", cut,
              f"partial {partial}/{len(pages)} ({', '.join(sorted(failed))})"))


if __name__ == "__main__":
    sys.exit(main())
