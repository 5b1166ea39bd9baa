"""Benchmark for issue 3: what routing costs, per query decision and per HTTP request.

    .venv/bin/python -m tests.benchmarks.bench_routing [--duration 10] [--decisions 200000]

In one run, against a throwaway topology of its own (2 shards, 1 replica each, not durable, ports
from 29400 up; destroyed at the end, also on failure or Ctrl-C), it measures:

1. the router's cost per decision: `django.db.router.db_for_read/db_for_write` for a sharded model
   inside a tenant and a request's routing state, next to a bare function call and the same router
   call for a control (unsharded) model;
2. the throughput of the sharded read endpoint `GET /api/sites/<slug>/_diag/threads/<id>` (tenant
   resolved by middleware, read routed to a replica) against the plain view
   `GET /_diag/plain/shard_0_replica_1/threads/<id>` (same SELECT on a fixed alias, no tenant
   lookup, no router), with wrk, alternating A, B, A, B, and prints the ratio sharded/plain.

Exits non-zero if any request failed or answered non-2xx, or if the sharded reads were not served
by the replica (the comparison would then be meaningless). Not a test: pytest does not collect it.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

REPLICA = "shard_0_replica_1"
SHARD = "shard_0"


class BenchmarkFailed(RuntimeError):
    pass


# ----- router cost ------------------------------------------------------------------------------

def time_calls(fn, arg, n: int, repeats: int) -> list[float]:
    """Microseconds per call of fn(arg), one figure per repeat (loop overhead included)."""
    results = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(n):
                fn(arg)
            results.append((time.perf_counter_ns() - start) / n / 1000)
    finally:
        gc.enable()
    return results


def router_costs(entry, n: int, repeats: int) -> list[tuple[str, list[float], str]]:
    """(decision, microseconds per call for each repeat, the alias it returned)."""
    from django.db import router

    from comments.models import Thread
    from routers.replicas import get_replica_health
    from routers.state import routing_scope
    from shards.models import Tenant
    from shards.tenancy import tenant

    health = get_replica_health()
    health.check_once()
    if health.usable_replicas(SHARD) != [REPLICA]:
        raise BenchmarkFailed(f"{REPLICA} is not usable for {SHARD}: {health.states()}")

    def bare_call(model):  # the floor: a Python call with the same shape
        return "default"

    rows = [("bare function call", time_calls(bare_call, Thread, n, repeats), "-")]
    rows.append(("db_for_read(control model)",
                 time_calls(router.db_for_read, Tenant, n, repeats),
                 router.db_for_read(Tenant)))
    rows.append(("db_for_write(control model)",
                 time_calls(router.db_for_write, Tenant, n, repeats),
                 router.db_for_write(Tenant)))
    # Separate routing states: after a write, reads of the request stay on the primary.
    with tenant(entry), routing_scope() as routing:
        health.check_once()  # fresh states, well inside stale_after for the whole loop
        rows.append(("db_for_read(Thread)",
                     time_calls(router.db_for_read, Thread, n, repeats),
                     router.db_for_read(Thread)))
        reasons = {reason for (_alias, reason) in routing.reads}
        if reasons != {"replica"} or {a for (a, _r) in routing.reads} != {REPLICA}:
            raise BenchmarkFailed(f"reads were not all routed to {REPLICA}: {routing.reads}")
    with tenant(entry), routing_scope():
        rows.append(("db_for_write(Thread)",
                     time_calls(router.db_for_write, Thread, n, repeats),
                     router.db_for_write(Thread)))
    return rows


# ----- HTTP throughput --------------------------------------------------------------------------

@dataclass
class WrkResult:
    label: str
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    socket_errors: int
    output: str


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def _duration_ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not match:
        raise BenchmarkFailed(f"cannot parse wrk duration {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


def parse_wrk(label: str, output: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, output, re.MULTILINE)
        if match is None:
            raise BenchmarkFailed(f"wrk output has no {pattern!r}:\n{output}")
        return match

    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    return WrkResult(
        label=label,
        requests=int(find(r"^\s*(\d+) requests in").group(1)),
        rps=float(find(r"^Requests/sec:\s+([\d.]+)").group(1)),
        p50_ms=_duration_ms(find(r"^\s+50%\s+(\S+)").group(1)),
        p99_ms=_duration_ms(find(r"^\s+99%\s+(\S+)").group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(g) for g in errors.groups()) if errors else 0,
        output=output,
    )


def write_lua(path: Path, paths: list[str]) -> Path:
    """A wrk script cycling through `paths`, so the runs read many rows, not one hot row."""
    quoted = ",\n".join(f'  "{p}"' for p in paths)
    path.write_text(
        "local paths = {\n" + quoted + "\n}\n"
        "local i = 0\n"
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )
    return path


def run_wrk(label: str, base_url: str, script: Path, *, duration: int, threads: int,
            connections: int) -> WrkResult:
    command = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency",
               "--timeout", "5s", "-s", str(script), base_url]
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=duration + 30)
    if done.returncode != 0:
        raise BenchmarkFailed(f"wrk exited {done.returncode}: {done.stderr}{done.stdout}")
    return parse_wrk(label, done.stdout)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def check_endpoints(base_url: str, sharded: list[str], plain: list[str]) -> dict[str, int]:
    """Every URL answers 200 before timing; returns where the sharded reads were served."""
    import json

    served: dict[str, int] = {}
    for path in plain + sharded:
        status, body = http_get(base_url + path)
        if status != 200:
            raise BenchmarkFailed(f"GET {path} answered {status}: {body[:300]!r}")
        if path in sharded:
            answer = json.loads(body)
            key = f"{answer['served_by']} ({answer['reason']})"
            served[key] = served.get(key, 0) + 1
    return served


# ----- the run ----------------------------------------------------------------------------------

def wait_replicated(tenant_id: int, expected: int, timeout: float = 30.0) -> None:
    from django.db import connections

    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        with connections[REPLICA].cursor() as cursor:
            cursor.execute("SELECT count(*) FROM comments_thread WHERE tenant_id = %s",
                           [tenant_id])
            count = cursor.fetchone()[0]
        if count >= expected:
            return
        time.sleep(0.1)
    raise BenchmarkFailed(f"{REPLICA} has {count} of {expected} threads after {timeout:.0f} s")


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    print("  ".join((h.rjust(w) if i else h.ljust(w))
                    for i, (h, w) in enumerate(zip(headers, widths, strict=True))))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(
            (c.rjust(w) if i else c.ljust(w)) for i, (c, w) in enumerate(zip(row, widths,
                                                                              strict=True))
        ))


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchmarkFailed("wrk is not installed (apt-get install wrk)")
    from tests.conftest import make_topology

    started = time.monotonic()
    topology = make_topology("shardsvc-bench-", shards=2, replicas=1, start_port=args.base_port)
    try:
        topology.up(service=False, migrate=True)
        os.environ.update(topology.settings_env())
        import django

        django.setup()
        from comments.models import Thread
        from shards.directory import create_tenant
        from shards.tenancy import tenant

        entry = create_tenant(f"bench-{uuid.uuid4().hex[:8]}", shard=SHARD)
        with tenant(entry):
            ids = [Thread.objects.create(url=f"/page/{i}", title=f"page {i}").id
                   for i in range(args.rows)]
        wait_replicated(entry.id, len(ids))
        setup_seconds = time.monotonic() - started

        costs = router_costs(entry, args.decisions, args.repeats)

        service = topology.start_service(name="bench", SHARDSVC_URLCONF="tests.urls",
                                         SHARDSVC_WORKERS=str(args.workers))
        sharded_paths = [f"/api/sites/{entry.slug}/_diag/threads/{i}" for i in ids]
        plain_paths = [f"/_diag/plain/{REPLICA}/threads/{i}" for i in ids]
        served = check_endpoints(service.url, sharded_paths, plain_paths)
        if set(served) != {f"{REPLICA} (replica)"}:
            raise BenchmarkFailed(f"sharded reads not all served by {REPLICA}: {served}")

        root = topology.layout.root
        scripts = {
            "sharded": write_lua(root / "sharded.lua", sharded_paths),
            "plain": write_lua(root / "plain.lua", plain_paths),
        }
        wrk = {"threads": args.threads, "connections": args.connections}
        for label, script in scripts.items():  # warm both: pools, caches, replica health
            run_wrk(label, service.url, script, duration=args.warmup, **wrk)
        runs: list[WrkResult] = []
        for round_ in range(args.rounds):
            for label in ("sharded", "plain"):
                result = run_wrk(label, service.url, scripts[label], duration=args.duration,
                                 **wrk)
                runs.append(result)
                print(f"  round {round_ + 1} {label:8s} {result.rps:9.1f} req/s  "
                      f"p50 {result.p50_ms:6.2f} ms  p99 {result.p99_ms:6.2f} ms", flush=True)
        served_after = check_endpoints(service.url, sharded_paths[:20], [])
    finally:
        try:
            from django.db import connections

            from project.pgpool import close_all_pools
            from shards.runtime import runtime

            runtime.reset()
            connections.close_all()
            close_all_pools()
        except Exception as exc:  # Django never set up: nothing to close
            print(f"(cleanup: {exc})", file=sys.stderr)
        topology.destroy()

    floor = statistics.median(costs[0][1])
    print()
    print(f"Router cost per decision ({args.decisions:,} calls x {args.repeats}, "
          "loop overhead included)")
    print_table(
        ["decision", "best us", "median us", "minus bare call", "routed to"],
        [[name, f"{min(v):.3f}", f"{statistics.median(v):.3f}",
          f"{statistics.median(v) - floor:+.3f}", where] for name, v, where in costs],
    )

    print()
    print(f"HTTP reads: wrk {args.duration}s x {args.rounds} rounds each, {args.threads} threads, "
          f"{args.connections} connections, {args.workers} gevent workers, {len(ids)} rows; "
          "alternating sharded/plain")
    rows = []
    for label in ("sharded", "plain"):
        mine = [r for r in runs if r.label == label]
        for number, r in enumerate(mine, 1):
            rows.append([f"{label} #{number}", f"{r.rps:.1f}", f"{r.p50_ms:.2f}",
                         f"{r.p99_ms:.2f}", str(r.requests), str(r.non_2xx),
                         str(r.socket_errors)])
    print_table(["endpoint", "req/s", "p50 ms", "p99 ms", "requests", "non-2xx", "sock err"],
                rows)

    def mean(label: str, attr: str) -> float:
        return statistics.fmean(getattr(r, attr) for r in runs if r.label == label)

    rps_s, rps_p = mean("sharded", "rps"), mean("plain", "rps")
    per_round = [s.rps / p.rps for s, p in zip(runs[0::2], runs[1::2], strict=True)]
    print()
    print(f"throughput ratio sharded/plain: {rps_s / rps_p:.3f} (mean {rps_s:.1f} vs "
          f"{rps_p:.1f} req/s; per round: {', '.join(f'{x:.3f}' for x in per_round)})")
    p50 = mean("sharded", "p50_ms") / mean("plain", "p50_ms")
    p99 = mean("sharded", "p99_ms") / mean("plain", "p99_ms")
    print(f"latency ratio sharded/plain: p50 {p50:.3f}, p99 {p99:.3f}")
    print(f"sharded reads served by: {served} before, {served_after} after the runs")
    print(f"setup {setup_seconds:.0f} s, total {time.monotonic() - started:.0f} s")

    bad = [r for r in runs if r.non_2xx or r.socket_errors]
    if bad:
        for r in bad:
            print(f"\nFAILED: {r.label}: {r.non_2xx} non-2xx, {r.socket_errors} socket errors\n"
                  f"{r.output}", file=sys.stderr)
        return 1
    if set(served_after) != {f"{REPLICA} (replica)"}:
        print(f"FAILED: sharded reads left {REPLICA}: {served_after}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_routing",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-port", type=int, default=29400,
                        help="first port to try for the throwaway topology (default 29400)")
    parser.add_argument("--decisions", type=int, default=200_000,
                        help="router calls per timing (default 200000)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per decision kind")
    parser.add_argument("--rows", type=int, default=100, help="threads the wrk runs cycle over")
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=2, help="seconds of warm-up per endpoint")
    parser.add_argument("--rounds", type=int, default=3, help="sharded/plain pairs (A, B, A, B)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gevent workers")
    args = parser.parse_args(argv)
    try:
        return run(args)
    except BenchmarkFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
