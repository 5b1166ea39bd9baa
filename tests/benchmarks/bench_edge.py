"""Scaling through nginx: throughput and p99 with 1, 2 and 3 app hosts, and CPU per request of
each tier, turned into the cores each tier needs at a given number of visits a day.

    .venv/bin/python -m tests.benchmarks.bench_edge [--duration 12 --connections 32]

One throwaway topology (ports from 29600 up; destroyed at the end, also on failure): 3 app hosts,
each a Gunicorn in its own network namespace (root only), nginx in front. For 1, 2 and 3 hosts
in rotation (the others marked down in nginx's upstream) it runs `wrk` against nginx: keyed reads
of comment pages of one site's threads (`GET /api/sites/<slug>/threads/<id>/comments`, through
the service's page cache), and reads each tier's CPU time from /proc/<pid>/stat (user + system,
the process and its children, reaped ones included) before and after: nginx, the app hosts'
Gunicorn masters and workers, PgBouncer, every PostgreSQL server. CPU per request is the tier's
CPU seconds over the requests wrk completed. wrk runs on the same machine and its CPU is not
counted. Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from pathlib import Path

from deploy.processes import children, read_pid, stat_fields
from deploy.topology import LocalTopology
from tests.benchmarks.perf_report import table
from tests.benchmarks.wrk import BenchmarkFailed, WrkResult, run_wrk
from tests.client import request

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TIERS = ("nginx", "app", "pgbouncer", "postgres")
# Visits a day, ten requests a visit, the peak hour at ten times the day's average rate.
VISITS_PER_DAY = (100_000, 1_000_000, 10_000_000)
REQUESTS_PER_VISIT = 10
PEAK_FACTOR = 10


def cpu_seconds(pid: int) -> float:
    """User + system time of a process and of its children it has reaped, plus (recursively)
    of its living children: a whole process tree's CPU, before or after a run."""
    try:
        fields = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except OSError:
        return 0.0
    own = sum(int(f) for f in fields[11:15]) / CLOCK_TICKS
    return own + sum(cpu_seconds(child) for child in children(pid))


def tier_roots(topology: LocalTopology) -> dict[str, list[int]]:
    def pids(*files: Path) -> list[int]:
        return [pid for f in files if (pid := read_pid(f)) is not None]

    return {
        "nginx": pids(topology.edge_dir / "nginx.pid"),
        "app": pids(*(topology.app_service(h).pidfile for h in topology.app_hosts())),
        "pgbouncer": pids(topology.pgbouncer_dir / "pgbouncer.pid"),
        "postgres": pids(*(n.datadir / "postmaster.pid" for n in topology.layout.nodes())),
    }


def tier_cpu(topology: LocalTopology) -> dict[str, float]:
    return {tier: sum(cpu_seconds(p) for p in roots)
            for tier, roots in tier_roots(topology).items()}


@dataclass
class Run:
    hosts: int
    wrk: WrkResult
    cpu_ms_per_request: dict[str, float]


def seed(topology: LocalTopology, threads: int) -> tuple[str, str, list[int]]:
    """A site with `threads` threads of five comments each; its slug, key and thread ids."""
    slug = f"bench-{uuid.uuid4().hex[:8]}"
    made = request("POST", f"{topology.edge_url}/api/ops/sites", body={"slug": slug, "name": slug},
                   headers={"X-Ops-Token": topology.ops_token()})
    if made.status != 201:
        raise BenchmarkFailed(f"creating the site: {made.status} {made.body}")
    key = made.body["api_key"]
    root = f"{topology.edge_url}/api/sites/{slug}"
    user = request("POST", f"{root}/users/token", body={"user_id": "bench"},
                   headers={"X-Api-Key": key}).body["token"]
    ids = []
    for i in range(threads):
        thread = request("PUT", f"{root}/threads", body={"url": f"https://x.test/{i}"},
                         headers={"X-Api-Key": key}).body["id"]
        for n in range(5):
            request("POST", f"{root}/threads/{thread}/comments", body={"body": f"c{n}"},
                    headers={"X-Api-Key": key, "X-User-Token": user})
        ids.append(thread)
    return slug, key, ids


def write_lua(path: Path, slug: str, key: str, ids: list[int]) -> Path:
    paths = ",\n".join(f'  "/api/sites/{slug}/threads/{i}/comments"' for i in ids)
    path.write_text(
        "local paths = {\n" + paths + "\n}\n"
        "local i = 0\n"
        f'wrk.headers["X-Api-Key"] = "{key}"\n'
        "request = function()\n"
        "  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\n'
        "end\n"
    )
    return path


def measure(topology: LocalTopology, hosts: int, script: Path, args: argparse.Namespace) -> Run:
    names = [h.name for h in topology.app_hosts()]
    topology.write_upstream(drained=set(names[hosts:]))
    topology.reload_edge()
    run_wrk("warm-up", topology.edge_url, script, duration=2, threads=2,
            connections=args.connections)
    before = tier_cpu(topology)
    result = run_wrk(f"{hosts} host(s)", topology.edge_url, script, duration=args.duration,
                     threads=2, connections=args.connections)
    after = tier_cpu(topology)
    per_request = {tier: (after[tier] - before[tier]) * 1000 / max(result.requests, 1)
                   for tier in TIERS}
    return Run(hosts, result, per_request)


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    print("\n".join(table(headers, rows)))


def cores_table(cost_ms: dict[str, float]) -> list[list[str]]:
    rows = []
    for visits in VISITS_PER_DAY:
        peak_rps = visits * REQUESTS_PER_VISIT / 86_400 * PEAK_FACTOR
        rows.append([f"{visits:,}", f"{peak_rps:,.0f}"] + [
            f"{peak_rps * cost_ms[tier] / 1000:.2f}" for tier in TIERS
        ])
    return rows


def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchmarkFailed("wrk is not installed (apt-get install wrk)")
    from tests.api_client import UNREACHED_THROTTLES
    from tests.conftest import make_topology

    base = make_topology("shardsvc-bench-edge-", shards=2, replicas=1, start_port=args.base_port)
    topology = LocalTopology(replace(base.layout, app_hosts=3), echo=base.echo)
    try:
        topology.up(service=False, migrate=True)
        topology.start_app_hosts(SHARDSVC_WORKERS=str(args.workers), **UNREACHED_THROTTLES)
        topology.ensure_edge()
        slug, key, ids = seed(topology, args.threads)
        script = write_lua(Path(tempfile.mkdtemp()) / "edge.lua", slug, key, ids)
        runs = [measure(topology, hosts, script, args) for hosts in (1, 2, 3)]
    finally:
        topology.destroy()

    print(f"\nGET comment pages through nginx, {args.connections} connections, "
          f"{args.duration} s a run, {args.workers} gevent worker(s) per app host, "
          f"{os.cpu_count()} CPU(s)")
    print_table(
        ["app hosts", "req/s", "p99 ms", "requests", "non-2xx", "sock err",
         *(f"{t} ms CPU/req" for t in TIERS)],
        [[str(r.hosts), f"{r.wrk.rps:.1f}", f"{r.wrk.p99_ms:.1f}", str(r.wrk.requests),
          str(r.wrk.non_2xx), str(r.wrk.socket_errors),
          *(f"{r.cpu_ms_per_request[t]:.3f}" for t in TIERS)] for r in runs],
    )
    # The cost model: the mean CPU per request of the three runs.
    cost = {t: sum(r.cpu_ms_per_request[t] for r in runs) / len(runs) for t in TIERS}
    print(f"\ncores per tier at peak ({REQUESTS_PER_VISIT} requests a visit, peak = "
          f"{PEAK_FACTOR}x the day's average rate, CPU per request as measured above)")
    print_table(["visits/day", "peak req/s", *TIERS], cores_table(cost))
    failed = sum(r.wrk.non_2xx + r.wrk.socket_errors for r in runs)
    if failed:
        print(f"{failed} request(s) failed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=12, help="seconds per wrk run")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--workers", type=int, default=1, help="gevent workers per app host")
    parser.add_argument("--threads", type=int, default=20, help="threads (pages) to read")
    parser.add_argument("--base-port", type=int, default=29600)
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        return run(args)
    except BenchmarkFailed as exc:
        print(f"benchmark failed: {exc}", file=sys.stderr)
        return 1
    finally:
        print(f"\n(total {time.monotonic() - started:.0f} s)")


if __name__ == "__main__":
    sys.exit(main())
