"""Load benchmark for issue 4: the comments API under a mixed, skewed workload, next to a plain
single-database Django view doing the same read.

    .venv/bin/python -m tests.benchmarks.bench_load [--duration 15] [--rounds 2] [--comments N]

In one run, against a throwaway topology of its own (2 shards, 1 replica each, not durable, ports
from 30400 up; destroyed at the end, also on failure or Ctrl-C), it:

1. seeds demo data with `manage.py seed_demo` (Zipf-skewed sites and threads);
2. starts the service (Gunicorn, 2 gevent workers) and signs end-user tokens through the API;
3. drives it with wrk and tests/benchmarks/load_mix.lua, alternating A, B, A, B:
   - mixed: 90% reads `GET /api/sites/<site>/threads/<id>/comments?limit=20` and 10% writes
     `POST .../comments` (X-Api-Key + X-User-Token), sites and threads skewed like the seed,
     read-your-writes on (each end user sends back the X-Causal-Token of its last write);
   - plain: the same reads on `GET /_diag/plain/<replica>/sites/<tenant>/threads/<id>/comments`,
     the same SQL on the thread's shard replica: no tenant lookup, key, router or cache;
4. prints requests/s, p50/p99 latency, non-2xx and socket errors per run, the ratios
   mixed/plain, and the share of the mixed runs' shard reads that replicas served
   (`shardsvc_read_routing_total` from /metrics, before and after each mixed run).

Exits non-zero if any measured request failed or answered non-2xx. Not a test: pytest does not
collect it.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from tests.benchmarks.bench_routing import BenchmarkFailed, WrkResult, parse_wrk, print_table

LUA = Path(__file__).resolve().parent / "load_mix.lua"
PROJECT_DIR = Path(__file__).resolve().parents[2]
OPS_PER_THREAD = 20_000


@dataclass
class Run:
    wrk: WrkResult
    statuses: dict[str, int] = field(default_factory=dict)
    cache: dict[str, int] = field(default_factory=dict)
    with_token: int = 0
    routing: dict[tuple[str, str, str], float] = field(default_factory=dict)


# ----- the workload -----------------------------------------------------------------------------

def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def write_data(path: Path, sites: list[dict], users: list[dict], args: argparse.Namespace) -> None:
    """The Lua data file: users, paths, and per wrk thread a sampled list of requests."""
    threads = [(site, t) for site in sites for t in site["threads"]]
    paths = [f"/api/sites/{site['slug']}/threads/{t['id']}/comments" for site, t in threads]
    plain = [f"/_diag/plain/{site['shard']}_replica_1/sites/{site['tenant_id']}/threads/"
             f"{t['id']}/comments?limit=20" for site, t in threads]
    # Reads and writes follow the seed's skew: a thread is picked as often as it has comments
    # (+1 so that none is never read), its site's share is the sum of those.
    weights = [t["comments"] + 1 for _site, t in threads]
    users_of: dict[str, list[int]] = {}
    for number, user in enumerate(users, 1):
        users_of.setdefault(user["slug"], []).append(number)
    rng = random.Random(args.seed)
    lines = ["return {", " users = {"]
    lines += [f"  {{key = {lua_string(u['key'])}, token = {lua_string(u['token'])}}},"
              for u in users]
    lines += [" },", " paths = {"] + [f"  {lua_string(p)}," for p in paths]
    lines += [" },", " plain = {"] + [f"  {lua_string(p)}," for p in plain]
    lines += [" },", " ops = {"]
    for _thread in range(args.threads):
        picks = rng.choices(range(len(threads)), weights=weights, k=OPS_PER_THREAD)
        user = [rng.choice(users_of[threads[i][0]["slug"]]) for i in picks]
        write = [1 if rng.random() < args.write_share else 0 for _ in picks]
        lines.append("  {")
        lines.append("   thread = {" + ",".join(str(i + 1) for i in picks) + "},")
        lines.append("   user = {" + ",".join(map(str, user)) + "},")
        lines.append("   write = {" + ",".join(map(str, write)) + "},")
        lines.append("  },")
    lines += [" },", "}", ""]
    path.write_text("\n".join(lines))


def http(method: str, url: str, body: dict | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def sign_users(base: str, sites: list[dict], count: int) -> list[dict]:
    """End users spread over the sites like their comments (at least one per site), each
    with a token signed by the service (POST /users/token with the site's key)."""
    total = sum(s["comments"] for s in sites) or 1
    plan = []
    for site in sites:
        share = max(1, round(count * site["comments"] / total))
        plan += [site] * share

    def sign(item: tuple[int, dict]) -> dict:
        number, site = item
        status, body = http("POST", f"{base}/api/sites/{site['slug']}/users/token",
                            {"user_id": f"load-{number}", "name": f"Load {number}"},
                            {"X-Api-Key": site["api_key"]})
        if status != 200:
            raise BenchmarkFailed(f"POST users/token for {site['slug']}: {status} {body[:200]!r}")
        return {"slug": site["slug"], "key": site["api_key"],
                "token": json.loads(body)["token"]}

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(sign, enumerate(plan, 1)))


# ----- measuring --------------------------------------------------------------------------------

_SAMPLE = re.compile(r'^shardsvc_read_routing_total\{([^}]*)\}\s+([0-9.eE+]+)$', re.MULTILINE)
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def read_routing(base: str) -> dict[tuple[str, str, str], float]:
    """(cluster, target, reason) -> reads, from the merged /metrics of all workers."""
    status, body = http("GET", f"{base}/metrics")
    if status != 200:
        raise BenchmarkFailed(f"GET /metrics answered {status}")
    samples = {}
    for labels, value in _SAMPLE.findall(body.decode()):
        found = dict(_LABEL.findall(labels))
        samples[(found["cluster"], found["target"], found["reason"])] = float(value)
    return samples


def delta(after: dict, before: dict) -> dict:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}


def run_wrk(label: str, base: str, data: Path, mode: str, args: argparse.Namespace,
            duration: int) -> Run:
    command = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
               "--latency", "--timeout", "5s", "-s", str(LUA), base, "--", str(data), mode]
    before = read_routing(base) if mode == "mixed" else {}
    done = subprocess.run(command, capture_output=True, text=True, check=False,
                          timeout=duration + 60)
    if done.returncode != 0:
        raise BenchmarkFailed(f"wrk exited {done.returncode}: {done.stderr}{done.stdout}")
    run = Run(parse_wrk(label, done.stdout))
    if mode == "mixed":
        run.routing = delta(read_routing(base), before)
    mix = re.search(r"^LOADMIX statuses=(\S*) cache=(\S*) with_token=(\d+)", done.stdout,
                    re.MULTILINE)
    if mix is None:
        raise BenchmarkFailed(f"no LOADMIX line in the wrk output:\n{done.stdout}")

    def counts(text: str) -> dict[str, int]:
        return {k: int(v) for k, v in (p.split(":") for p in text.split(",") if p)}

    run.statuses, run.cache, run.with_token = counts(mix[1]), counts(mix[2]), int(mix[3])
    return run


def seed(topology, args: argparse.Namespace, keys: Path) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", "seed_demo", "--sites", str(args.sites),
         "--comments", str(args.comments), "--threads-per-site", str(args.threads_per_site),
         "--seed", str(args.seed), "--keys-out", str(keys)],
        cwd=PROJECT_DIR, env=topology.service_env(), capture_output=True, text=True,
        check=False, timeout=600,
    )
    if done.returncode != 0:
        raise BenchmarkFailed(f"seed_demo failed:\n{done.stdout}{done.stderr}")
    return done.stdout.strip().splitlines()[-1]


# ----- the run ----------------------------------------------------------------------------------

def run(args: argparse.Namespace) -> int:
    if shutil.which("wrk") is None:
        raise BenchmarkFailed("wrk is not installed (apt-get install wrk)")
    from tests.conftest import make_topology

    started = time.monotonic()
    topology = make_topology("shardsvc-load-", shards=2, replicas=1, start_port=args.base_port)
    runs: list[Run] = []
    try:
        topology.up(service=False, migrate=True)
        root = topology.layout.root
        keys = root / "keys.json"
        seeded = seed(topology, args, keys)
        print(f"[bench] {seeded}", flush=True)
        sites = json.loads(keys.read_text())["sites"]
        # Load, not abuse: a few hundred users writing at full speed pass any per-user limit.
        service = topology.start_service(name="bench", SHARDSVC_URLCONF="tests.urls",
                                         SHARDSVC_WORKERS=str(args.workers),
                                         SHARDSVC_THROTTLE_WRITES="off")
        users = sign_users(service.url, sites, args.users)
        data = root / "load_data.lua"
        write_data(data, sites, users, args)
        setup_seconds = time.monotonic() - started
        print(f"[bench] {len(users)} end users; setup {setup_seconds:.0f} s; warming up",
              flush=True)
        for mode in ("mixed", "plain"):  # pools, caches, replica health, page cache
            run_wrk(f"warm {mode}", service.url, data, mode, args, args.warmup)
        for round_ in range(args.rounds):
            for mode in ("mixed", "plain"):
                result = run_wrk(mode, service.url, data, mode, args, args.duration)
                runs.append(result)
                w = result.wrk
                print(f"  round {round_ + 1} {mode:6s} {w.rps:9.1f} req/s  p50 {w.p50_ms:6.2f} "
                      f"ms  p99 {w.p99_ms:7.2f} ms  non-2xx {w.non_2xx}", flush=True)
    finally:
        topology.destroy()
    report(runs, args, len(sites), sum(s["comments"] for s in sites), len(users),
           time.monotonic() - started)
    bad = [r for r in runs if r.wrk.non_2xx or r.wrk.socket_errors]
    for r in bad:
        print(f"\nFAILED: {r.wrk.label}: {r.wrk.non_2xx} non-2xx (statuses {r.statuses}), "
              f"{r.wrk.socket_errors} socket errors\n{r.wrk.output}", file=sys.stderr)
    return 1 if bad else 0


def report(runs: list[Run], args: argparse.Namespace, n_sites: int, n_comments: int,
           n_users: int, seconds: float) -> None:
    print()
    print(f"Load: wrk {args.duration}s x {args.rounds} rounds each, {args.threads} threads, "
          f"{args.connections} connections, {args.workers} gevent workers; {n_sites} sites, "
          f"{n_comments:,} seeded comments, {n_users} end users; mixed = "
          f"{100 - 100 * args.write_share:.0f}% reads / {100 * args.write_share:.0f}% writes")
    rows = []
    for label in ("mixed", "plain"):
        mine = [r for r in runs if r.wrk.label == label]
        for number, r in enumerate(mine, 1):
            w = r.wrk
            writes = r.statuses.get("201", 0)
            rows.append([f"{label} #{number}", f"{w.rps:.1f}", f"{w.p50_ms:.2f}",
                         f"{w.p99_ms:.2f}", str(w.requests), str(writes) if label == "mixed"
                         else "-", str(w.non_2xx), str(w.socket_errors)])
    print_table(["run", "req/s", "p50 ms", "p99 ms", "requests", "writes", "non-2xx",
                 "sock err"], rows)

    def mean(label: str, attr: str) -> float:
        return statistics.fmean(getattr(r.wrk, attr) for r in runs if r.wrk.label == label)

    mixed, plain = mean("mixed", "rps"), mean("plain", "rps")
    print()
    print(f"throughput ratio mixed/plain: {mixed / plain:.3f} ({mixed:.1f} vs {plain:.1f} "
          "req/s)")
    print(f"latency ratio mixed/plain: p50 {mean('mixed', 'p50_ms') / mean('plain', 'p50_ms'):.3f}"
          f", p99 {mean('mixed', 'p99_ms') / mean('plain', 'p99_ms'):.3f}")

    routing: dict[tuple[str, str, str], float] = {}
    cache: dict[str, int] = {}
    tokened = requests = 0
    for r in runs:
        if r.wrk.label != "mixed":
            continue
        for k, v in r.routing.items():
            routing[k] = routing.get(k, 0) + v
        for k, v in r.cache.items():
            cache[k] = cache.get(k, 0) + v
        tokened += r.with_token
        requests += r.wrk.requests
    shard_reads = {k: v for k, v in routing.items() if k[0] != "default"}
    total = sum(shard_reads.values())
    replica = sum(v for k, v in shard_reads.items() if k[1] == "replica")
    reasons: dict[str, float] = {}
    for (_cluster, target, reason), v in shard_reads.items():
        reasons[f"{target}/{reason}"] = reasons.get(f"{target}/{reason}", 0) + v
    share = 100 * replica / total if total else 0.0
    print(f"shard reads served by replicas (mixed runs, /metrics): {share:.1f}% of "
          f"{total:,.0f} (" + ", ".join(f"{k} {v:,.0f}" for k, v in sorted(reasons.items()))
          + ")")
    pages = sum(cache.values())
    print(f"comment pages from the Redis cache: {100 * cache.get('hit', 0) / max(pages, 1):.1f}% "
          f"of {pages:,} (" + ", ".join(f"{k} {v:,}" for k, v in sorted(cache.items())) + "); "
          f"requests carrying a causal token: {100 * tokened / max(requests, 1):.1f}%")
    print(f"total {seconds:.0f} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.bench_load",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-port", type=int, default=30400,
                        help="first port to try for the throwaway topology (default 30400)")
    parser.add_argument("--sites", type=int, default=20, help="seeded sites (default 20)")
    parser.add_argument("--comments", type=int, default=200_000,
                        help="seeded comments (default 200000)")
    parser.add_argument("--threads-per-site", type=int, default=20,
                        help="seeded threads per site (default 20)")
    parser.add_argument("--users", type=int, default=200,
                        help="end users with signed tokens (default 200)")
    parser.add_argument("--write-share", type=float, default=0.1,
                        help="share of mixed requests that post a comment (default 0.1)")
    parser.add_argument("--seed", type=int, default=42, help="random seed (default 42)")
    parser.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per mode")
    parser.add_argument("--rounds", type=int, default=2, help="mixed/plain pairs (A, B, A, B)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn gevent workers")
    args = parser.parse_args(argv)
    if not 0 <= args.write_share <= 1:
        parser.error("--write-share must be between 0 and 1")
    try:
        return run(args)
    except BenchmarkFailed as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
