"""The performance benchmark: the service against a plain Django project, under load, in one run.

    .venv/bin/python -m tests.benchmarks.bench_perf [--quick] [--duration 8] [--rounds 2] ...

It starts a throwaway topology of its own (2 shards, 1 streaming replica each, PgBouncer in
transaction mode, Redis; ports from SHARDSVC_TEST_BASE_PORT, or 30400; removed at the end,
also on failure or Ctrl-C), seeds it with `manage.py seed_demo`, and measures with wrk:

1. A/B, alternating per round (A, B, then B, A): the service's API against a minimal plain
   Django project (tests/benchmarks/plain_django: no service code, one database, the service's
   Gunicorn settings, django-db-geventpool, the same SQL and JSON shape) for (a) a single-row
   read, (b) a comment page from the cache (against the plain single-row read), (c) a comment
   page built from the database (each request a fresh cursor: a cache key never asked before),
   (d) a comment write;
2. the mixed workload (load_mix.lua: 90% page reads, 10% comment writes, skewed sites and
   threads, read-your-writes tokens on) with throughput, p50/p99, the share of shard reads
   replicas served (from /metrics) and the page cache's hit rate;
3. pool tails: single-row reads at 64 connections on a pool cap of 10 per alias per worker;
4. 50 ms of database latency, gevent against sync Gunicorn workers at equal worker count;
5. the router's decision time (`db_for_read` median, microseconds), in this process.

It prints every run, then each target with its measured value and PASS/FAIL, and the load
average before and after. It exits 1 only when requests failed (non-2xx, socket errors, wrk
timeouts): a benchmark reports, it does not judge. Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from deploy.topology import LocalTopology
from tests.benchmarks import mixed
from tests.benchmarks.perf_phases import (
    Kind,
    Measured,
    ab_kinds,
    ab_phase,
    check_shapes,
    mixed_phase,
    print_run,
    run_kind,
    write_requests,
)
from tests.benchmarks.perf_report import parse_loadavg
from tests.benchmarks.perf_summary import Setup, report
from tests.benchmarks.plain_server import start_plain
from tests.benchmarks.router_cost import router_costs
from tests.benchmarks.wrk import BenchmarkFailed

PAIRS = [("service_row", "plain_row"), ("service_cached", "plain_row"),
         ("service_built", "plain_built"), ("service_write", "plain_write")]
QUICK = {"duration": 3, "warmup": 1, "rounds": 1, "mixed_duration": 5, "mixed_rounds": 1,
         "sites": 5, "comments": 20_000, "users": 40, "ab_threads": 40, "ab_comments": 2_000,
         "latency_duration": 4, "decisions": 20_000, "repeats": 3}


@dataclass
class Phases:
    ab: list[Measured]
    mixed: list[Measured]
    tails: list[Measured]
    latency: list[Measured]


def loadavg() -> tuple[float, float, float]:
    return parse_loadavg(Path("/proc/loadavg").read_text())


def pgbouncer_sizes(config: str) -> dict[str, int]:
    return {k: int(v) for k, v in re.findall(
        r"^(default_pool_size|reserve_pool_size|max_db_connections)\s*=\s*(\d+)", config,
        re.MULTILINE)}


def run(args: argparse.Namespace) -> int:
    from tests.conftest import make_topology

    started, load_before = time.monotonic(), loadavg()
    print(f"[perf] {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, loadavg {load_before}", flush=True)
    topology = make_topology("shardsvc-perf-", shards=2, replicas=1, start_port=args.base_port)
    root, base = topology.layout.root, topology.layout.base_port
    try:
        topology.up(service=False, migrate=True)
        os.environ.update(topology.settings_env())
        import django

        django.setup()
        # This process's replica checker exists for the router timing only: what it logs about
        # replicas (lag after idle periods, the servers stopping at the end) is not the service's.
        logging.getLogger("shardsvc.replicas").setLevel(logging.ERROR)
        from django.conf import settings

        ab_site = mixed.seed(topology, root / "ab-keys.json", sites=1, comments=args.ab_comments,
                             threads_per_site=args.ab_threads, prefix="perf", zipf=0)[0]
        mix_sites = mixed.seed(topology, root / "mix-keys.json", sites=args.sites,
                               comments=args.comments, threads_per_site=20, prefix="mix")
        print(f"[perf] seeded: {ab_site['slug']} on {ab_site['shard']} "
              f"({len(ab_site['threads'])} threads, {ab_site['comments']:,} comments); "
              f"{len(mix_sites)} mixed sites, {sum(s['comments'] for s in mix_sites):,} comments",
              flush=True)
        cap = int(settings.DB_POOL_MAX_CONNS)
        # Load, not abuse: a few users writing at full speed pass any per-user write limit.
        service = topology.start_service(name="perf", SHARDSVC_THROTTLE_WRITES="off")
        plain = start_plain(topology, alias=ab_site["shard"], port=base + 3, max_conns=cap,
                            workers=topology.layout.workers)
        setup = Setup(workers=topology.layout.workers, cap=cap,
                      primary_cap=int(settings.DB_POOL_MAX_CONNS_PRIMARY),
                      pgbouncer=pgbouncer_sizes(topology.pgbouncer_config()),
                      latency_cap=args.latency_pool_cap or cap, plain_dsn=plain.dsn)
        decisions = router_costs(ab_site["slug"], n=args.decisions, repeats=args.repeats)

        ab_users = mixed.sign_users(service.url, [ab_site], 16)
        kinds = ab_kinds(root, service.url, plain.url, ab_site, ab_users)
        for line in check_shapes(kinds):
            print(f"[perf] {line}", flush=True)
        print("[perf] A/B runs", flush=True)
        ab = ab_phase(kinds, PAIRS, args)

        users = mixed.sign_users(service.url, mix_sites, args.users)
        data = mixed.write_mix_data(root / "mix.lua", mix_sites, users,
                                    wrk_threads=args.threads, write_share=args.write_share,
                                    seed_value=42)
        print("[perf] mixed workload", flush=True)
        mixed_runs = mixed_phase(service.url, data, args)
        service.stop()
        plain.stop()

        tails = tails_phase(topology, args, kinds["service_row"], base + 4)
        latency = latency_phase(topology, args, ab_site["shard"], base + 5)
        phases = Phases(ab, mixed_runs, tails, latency)
    finally:
        from django.conf import settings as configured

        if configured.configured:
            from django.db import connections

            connections.close_all()
        topology.destroy()
    failed = report(phases, decisions, setup, args, load_before, loadavg(),
                    time.monotonic() - started)
    return 1 if failed else 0


def tails_phase(topology: LocalTopology, args: argparse.Namespace, row: Kind,
                port: int) -> list[Measured]:
    """Single-row reads on a service whose pool holds at most `--tails-cap` connections per
    alias per worker, with the topology's (the default) worker count."""
    print(f"[perf] pool tails: cap {args.tails_cap}, {topology.layout.workers} workers", flush=True)
    service = topology.start_service(name="tails", port=port,
                                     SHARDSVC_POOL_MAX_CONNS=str(args.tails_cap))
    try:
        kind = Kind("tails", f"tails: cap {args.tails_cap}", service.url, row.data)
        runs = [run_kind(kind, args, args.warmup, 0)]
        for round_ in range(1, args.rounds + 1):
            runs.append(run_kind(kind, args, args.duration, round_))
            print_run(runs[-1])
        return runs
    finally:
        service.stop()


def latency_phase(topology: LocalTopology, args: argparse.Namespace, shard: str,
                  port: int) -> list[Measured]:
    """`--latency` seconds of real server-side wait per request (`pg_sleep` on the shard's
    replica through PgBouncer, the test URLconf's /_diag/sleep) on gevent and on sync workers,
    same worker count and pool cap, alternating."""
    path = f"/_diag/sleep?alias={shard}_replica_1&seconds={args.latency:g}"
    env = {"SHARDSVC_URLCONF": "tests.urls"}
    if args.latency_pool_cap:
        env["SHARDSVC_POOL_MAX_CONNS"] = str(args.latency_pool_cap)
    print(f"[perf] {args.latency * 1000:g} ms database latency: gevent vs sync", flush=True)
    gevent = topology.start_service(name="latency-gevent", port=port, **env)
    sync = topology.start_service(name="latency-sync", port=port + 1,
                                  GUNICORN_CMD_ARGS="--worker-class sync", **env)
    root = topology.layout.root
    try:
        data = write_requests(root / "sleep.lua", [{"method": "GET", "path": path,
                                                    "headers": {}}])
        kinds = [Kind("gevent", "latency: gevent workers", gevent.url, data),
                 Kind("sync", "latency: sync workers", sync.url, data)]
        # Sync workers queue the connections they cannot serve: give waits room past 5 s.
        options = {"connections": args.latency_connections, "timeout": 15.0}
        runs = [run_kind(k, args, args.warmup, 0, **options) for k in kinds]
        for round_ in range(1, args.rounds + 1):
            for kind in (kinds if round_ % 2 else kinds[::-1]):
                runs.append(run_kind(kind, args, args.latency_duration, round_, **options))
                print_run(runs[-1])
        return runs
    finally:
        gevent.stop()
        sync.stop()


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_perf", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--quick", action="store_true",
        help="a smoke run: short runs, one round, small data (figures are not comparable)")
    add("--base-port", type=int,
        default=int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "30400")),
        help="first port to try for the throwaway topology (default SHARDSVC_TEST_BASE_PORT, "
             "else 30400; the next free block of 100 if taken)")
    add("--duration", type=float, default=8, help="seconds per A/B, tails run (default 8)")
    add("--warmup", type=float, default=2, help="seconds of warm-up per kind of run")
    add("--rounds", type=int, default=2, help="A/B rounds (A, B, then B, A; default 2)")
    add("--threads", type=int, default=2, help="wrk threads (default 2)")
    add("--connections", type=int, default=64, help="wrk connections (default 64)")
    add("--ab-threads", type=int, default=200, help="threads of the A/B site (default 200)")
    add("--ab-comments", type=int, default=12_000, help="comments of the A/B site")
    add("--mixed-duration", type=float, default=15, help="seconds per mixed run (default 15)")
    add("--mixed-rounds", type=int, default=2, help="mixed runs (default 2)")
    add("--sites", type=int, default=20, help="sites of the mixed workload (default 20)")
    add("--comments", type=int, default=200_000, help="their comments (default 200000)")
    add("--users", type=int, default=200, help="their end users with tokens (default 200)")
    add("--write-share", type=float, default=0.1, help="writes in the mix (default 0.1)")
    add("--tails-cap", type=int, default=10, help="pool cap of the tails runs (default 10)")
    add("--latency", type=float, default=0.05, help="database wait per request, s (0.05)")
    add("--latency-duration", type=float, default=8, help="seconds per latency run")
    add("--latency-connections", type=int, default=128,
        help="wrk connections of the latency runs (default 128)")
    add("--latency-pool-cap", type=int, default=0,
        help="pool cap per alias per worker in the latency runs (default: the service's)")
    add("--decisions", type=int, default=200_000, help="router calls per timing")
    add("--repeats", type=int, default=5, help="timings per router decision")
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**QUICK)  # flags given explicitly still win
    args = p.parse_args(argv)
    if not 0 <= args.write_share <= 1:
        p.error("--write-share must be between 0 and 1")
    try:
        return run(args)
    except BenchmarkFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
