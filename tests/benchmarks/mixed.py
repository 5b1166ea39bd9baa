"""The mixed workload's data and the service's own counters, for bench_perf.

- `seed`: demo sites, threads and comments with `manage.py seed_demo` (Zipf-skewed);
- `sign_users`: end users with tokens signed by the service (POST /users/token);
- `write_mix_data`: the Lua data file of load_mix.lua: per wrk thread a sampled sequence of
  reads (a thread's comment page) and writes (a comment), skewed like the seed;
- `read_routing`: where the service routed reads, from /metrics (all workers merged).
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from deploy.topology import PROJECT_DIR, LocalTopology
from tests.benchmarks.wrk import BenchmarkFailed

LUA = Path(__file__).resolve().parent / "load_mix.lua"
OPS_PER_THREAD = 20_000


def http(method: str, url: str, body: dict[str, Any] | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def seed(topology: LocalTopology, keys: Path, *, sites: int, comments: int,
         threads_per_site: int, prefix: str, zipf: float = 1.1,
         seed_value: int = 42) -> list[dict[str, Any]]:
    """Seeds through the service's command; returns the sites of its --keys-out file."""
    done = subprocess.run(
        [sys.executable, "manage.py", "seed_demo", "--sites", str(sites),
         "--comments", str(comments), "--threads-per-site", str(threads_per_site),
         "--zipf", str(zipf), "--seed", str(seed_value), "--prefix", prefix,
         "--keys-out", str(keys)],
        cwd=PROJECT_DIR, env=topology.service_env(), capture_output=True, text=True,
        check=False, timeout=900,
    )
    if done.returncode != 0:
        raise BenchmarkFailed(f"seed_demo failed:\n{done.stdout}{done.stderr}")
    sites_out: list[dict[str, Any]] = json.loads(keys.read_text())["sites"]
    return sites_out


def sign_users(base: str, sites: list[dict[str, Any]], count: int) -> list[dict[str, str]]:
    """End users spread over the sites like their comments (at least one per site), each
    with a token signed by the service (POST /users/token with the site's key)."""
    total = sum(s["comments"] for s in sites) or 1
    plan = []
    for site in sites:
        plan += [site] * max(1, round(count * site["comments"] / total))

    def sign(item: tuple[int, dict[str, Any]]) -> dict[str, str]:
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


def lua_string(text: str) -> str:
    return json.dumps(text)  # a JSON string of ASCII is a valid Lua string literal


def write_mix_data(path: Path, sites: list[dict[str, Any]], users: list[dict[str, str]], *,
                   wrk_threads: int, write_share: float, seed_value: int) -> Path:
    """The Lua data file of load_mix.lua: users, paths, and per wrk thread a sampled list of
    requests. Reads and writes follow the seed's skew: a thread is picked as often as it has
    comments (+1 so that none is never read), its site's share is the sum of those."""
    threads = [(site, t) for site in sites for t in site["threads"]]
    paths = [f"/api/sites/{site['slug']}/threads/{t['id']}/comments" for site, t in threads]
    weights = [t["comments"] + 1 for _site, t in threads]
    users_of: dict[str, list[int]] = {}
    for number, user in enumerate(users, 1):
        users_of.setdefault(user["slug"], []).append(number)
    rng = random.Random(seed_value)
    lines = ["return {", " users = {"]
    lines += [f"  {{key = {lua_string(u['key'])}, token = {lua_string(u['token'])}}},"
              for u in users]
    lines += [" },", " paths = {"] + [f"  {lua_string(p)}," for p in paths]
    lines += [" },", " ops = {"]
    for _thread in range(wrk_threads):
        picks = rng.choices(range(len(threads)), weights=weights, k=OPS_PER_THREAD)
        chosen = [rng.choice(users_of[threads[i][0]["slug"]]) for i in picks]
        write = [1 if rng.random() < write_share else 0 for _ in picks]
        lines.append("  {")
        lines.append("   thread = {" + ",".join(str(i + 1) for i in picks) + "},")
        lines.append("   user = {" + ",".join(map(str, chosen)) + "},")
        lines.append("   write = {" + ",".join(map(str, write)) + "},")
        lines.append("  },")
    lines += [" },", "}", ""]
    path.write_text("\n".join(lines))
    return path


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


def delta(after: dict[tuple[str, str, str], float],
          before: dict[tuple[str, str, str], float]) -> dict[tuple[str, str, str], float]:
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v - before.get(k, 0.0)}
