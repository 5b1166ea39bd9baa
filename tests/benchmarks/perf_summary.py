"""bench_perf's report: the runs, the figures derived from them, each target with PASS/FAIL."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from typing import Protocol

from tests.benchmarks.cpu_split import CpuSplit
from tests.benchmarks.perf_phases import Measured
from tests.benchmarks.perf_report import (
    Target,
    hit_rate,
    loadavg_text,
    mean,
    number,
    ratio,
    replica_shares,
    table,
)
from tests.benchmarks.router_cost import Decision


class PhaseRuns(Protocol):
    ab: list[Measured]
    mixed: list[Measured]
    tails: list[Measured]
    latency: list[Measured]


@dataclass
class Setup:
    workers: int
    cap: int
    primary_cap: int
    pgbouncer: dict[str, int]
    latency_cap: int
    plain_dsn: str


def measured(runs: list[Measured], kind: str) -> list[Measured]:
    return [r for r in runs if r.kind == kind and r.round > 0]


def rate(runs: list[Measured], kind: str) -> float:
    return mean(r.wrk.rps for r in measured(runs, kind))


def p(runs: list[Measured], kind: str, which: str) -> float:
    return mean(getattr(r.wrk, f"{which}_ms") for r in measured(runs, kind))


def counts(runs: list[Measured], name: str) -> dict[str, int]:
    total: dict[str, int] = {}
    for run in runs:
        for key, value in run.wrk.counters.get(name, {}).items():
            total[key] = total.get(key, 0) + value
    return total


def run_rows(runs: list[Measured]) -> list[list[str]]:
    rows = []
    for r in runs:
        if r.round == 0:
            continue
        w = r.wrk
        cache = ",".join(f"{k} {v}" for k, v in sorted(w.counters.get("cache", {}).items()))
        rows.append([f"{w.label} #{r.round}", f"{w.rps:,.1f}", f"{w.p50_ms:.2f}",
                     f"{w.p99_ms:.2f}", str(w.requests), str(w.failed), cache])
    return rows


def report(phases: PhaseRuns, decisions: list[Decision], setup: Setup,
           args: argparse.Namespace, load_before: tuple[float, float, float],
           load_after: tuple[float, float, float], seconds: float) -> int:
    """Prints everything; returns the number of failed requests over all runs."""
    cores = os.cpu_count() or 1
    out = print
    headers = ["run", "req/s", "p50 ms", "p99 ms", "requests", "failed", "X-Cache"]
    bouncer = setup.pgbouncer
    out()
    out(f"A/B: wrk {args.threads} threads, {args.connections} connections, {args.duration:g} s "
        f"per run, {args.rounds} round(s) alternating; service and plain: {setup.workers} "
        f"gevent workers, pool cap {setup.cap} per alias per worker (the service's primaries "
        f"{setup.primary_cap}); plain on "
        f"{setup.plain_dsn.rsplit('/', 1)[-1]} (primary), service reads on its replica")
    for line in table(headers, run_rows(phases.ab)):
        out("  " + line)
    ab = phases.ab
    out()
    out("  ratio (mean req/s)                      service      plain   ratio   p50 ms s/p")
    comparisons = [("(a) single-row read", "service_row", "plain_row"),
                   ("(b) cached page / plain single-row", "service_cached", "plain_row"),
                   ("(c) page built from the database", "service_built", "plain_built"),
                   ("(d) comment write", "service_write", "plain_write")]
    for name, s, pl in comparisons:
        a, b = rate(ab, s), rate(ab, pl)
        out(f"  {name:<36} {a:10,.1f} {b:10,.1f} {ratio(a, b):6.2f}x  "
            f"{p(ab, s, 'p50'):6.2f}/{p(ab, pl, 'p50'):.2f}")
    out(f"  X-Cache of (b): {counts(measured(ab, 'service_cached'), 'cache')}; of (c): "
        f"{counts(measured(ab, 'service_built'), 'cache')}")
    writes = measured(ab, "service_write")
    acked = mean(r.wrk.counters.get("statuses", {}).get("201", 0) / r.wrk.seconds
                 for r in writes)

    mix = measured(phases.mixed, "mixed")
    out()
    out(f"Mixed {100 - 100 * args.write_share:.0f}/{100 * args.write_share:.0f}: wrk "
        f"{args.connections} connections, {args.mixed_duration:g} s x {args.mixed_rounds}, "
        f"{args.sites} sites, {args.comments:,} seeded comments, {args.users} end users, "
        f"read-your-writes tokens on")
    for line in table(headers, run_rows(phases.mixed)):
        out("  " + line)
    routing: dict[tuple[str, str, str], float] = {}
    for r in mix:
        for key, value in r.routing.items():
            routing[key] = routing.get(key, 0.0) + value
    free_share, all_share, shard_reads = replica_shares(routing)
    reasons: dict[str, float] = {}
    for (cluster, target, reason), value in routing.items():
        if cluster != "default":
            reasons[f"{target}/{reason}"] = reasons.get(f"{target}/{reason}", 0.0) + value
    cache = counts(mix, "cache")
    statuses = counts(mix, "statuses")
    tokened = sum(r.wrk.counters.get("with_token", {}).get("", 0) for r in mix)
    out(f"  shard reads {shard_reads:,.0f}: " + ", ".join(
        f"{k} {v:,.0f}" for k, v in sorted(reasons.items())))
    out(f"  replicas served {free_share:.1f}% of the shard reads free to use one "
        f"(no write, transaction or unreached position), {all_share:.1f}% of all")
    out(f"  comment pages: X-Cache {dict(sorted(cache.items()))}, hit rate {hit_rate(cache):.1f}%;"
        f" statuses {dict(sorted(statuses.items()))}; requests with a causal token {tokened:,}")
    cpu = CpuSplit()
    for r in mix:
        if r.cpu is not None:
            cpu.merge(r.cpu)
    out(f"  {cpu.line()}")

    out()
    out(f"Pool tails: single-row reads, {args.connections} connections, pool cap "
        f"{args.tails_cap} per alias per worker, {setup.workers} workers")
    for line in table(headers, run_rows(phases.tails)):
        out("  " + line)
    tails_p50, tails_p99 = p(phases.tails, "tails", "p50"), p(phases.tails, "tails", "p99")

    lat = phases.latency
    ceiling = min(setup.latency_cap * setup.workers,
                  bouncer.get("default_pool_size", 0) + bouncer.get("reserve_pool_size", 0),
                  args.latency_connections)
    out()
    out(f"{args.latency * 1000:g} ms database latency (pg_sleep on the replica per request): "
        f"{setup.workers} workers each, wrk {args.latency_connections} connections; pool cap "
        f"{setup.latency_cap} per alias per worker; PgBouncer default_pool_size "
        f"{bouncer.get('default_pool_size')} + reserve {bouncer.get('reserve_pool_size')}, "
        f"max_db_connections {bouncer.get('max_db_connections')}: at most {ceiling} waits at "
        f"once, {ceiling / args.latency:,.0f} req/s; sync at most "
        f"{setup.workers / args.latency:,.0f} req/s")
    for line in table(headers, run_rows(lat)):
        out("  " + line)

    row_read = next((d for d in decisions if d.name == "db_for_read(Thread)"), None)
    out()
    out(f"Router decisions ({args.decisions:,} calls x {args.repeats}, loop overhead included)")
    for line in table(["decision", "best us", "median us", "routed to"],
                      [[d.name, f"{min(d.micros):.3f}", f"{d.median:.3f}", d.routed_to]
                       for d in decisions]):
        out("  " + line)

    targets = [
        Target("single-row API read / plain Django", ratio(rate(ab, "service_row"),
               rate(ab, "plain_row")), "x", at_least=0.95),
        Target("cached comment page / plain single-row read",
               ratio(rate(ab, "service_cached"), rate(ab, "plain_row")), "x", at_least=1.5),
        Target("mixed 90/10 throughput", rate(phases.mixed, "mixed"), "req/s", at_least=2000),
        Target("mixed 90/10 p99", p(phases.mixed, "mixed", "p99"), "ms", at_most=100),
        Target("replica share of token-less shard reads", free_share, "%", at_least=80),
        Target("comment writes acknowledged", acked, "/s", at_least=500),
        Target("comment writes p99", p(ab, "service_write", "p99"), "ms", at_most=200),
        Target(f"pool tails p99/p50 (cap {args.tails_cap})", ratio(tails_p99, tails_p50), "x",
               at_most=3, note=f"p50 {number(tails_p50, 'ms')}, p99 {number(tails_p99, 'ms')}"),
        Target(f"{args.latency * 1000:g} ms latency: gevent / sync", ratio(
            rate(lat, "gevent"), rate(lat, "sync")), "x", at_least=35,
            note=f"{rate(lat, 'gevent'):,.0f} vs {rate(lat, 'sync'):,.1f} req/s"),
        Target("router decision db_for_read(Thread) median",
               row_read.median if row_read else None, "us", at_most=10,
               note=f"routed to {row_read.routed_to}" if row_read else ""),
    ]
    out()
    out("Targets (wrk is closed-loop: each rate is what the server answered at that many "
        "connections)")
    for goal in targets:
        out("  " + goal.line())
    every = [*phases.ab, *phases.mixed, *phases.tails, *phases.latency]
    failed = sum(r.wrk.failed for r in every)
    out()
    out(f"loadavg before {loadavg_text(load_before, cores)}; after "
        f"{loadavg_text(load_after, cores)}; total {seconds:.0f} s")
    out(f"failed requests: {failed}" + "".join(
        f"\n  {r.wrk.label} round {r.round}: {r.wrk.non_2xx} non-2xx "
        f"{r.wrk.counters.get('statuses', {})}, {r.wrk.socket_errors} socket errors"
        for r in every if r.wrk.failed))
    return failed
