"""The measuring phases of bench_perf: what each run requests, and the runs themselves.

Every run is wrk with a Lua script (requests.lua, load_mix.lua) whose counter line says which
statuses and X-Cache values the answers carried, so a run that measured errors or the wrong
cache path shows it.
"""

from __future__ import annotations

import argparse
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.benchmarks import mixed
from tests.benchmarks.cpu_split import CpuSplit
from tests.benchmarks.wrk import BenchmarkFailed, WrkResult, run_wrk

REQUESTS_LUA = Path(__file__).resolve().parent / "requests.lua"
_RUNS = itertools.count(1)
PAGE_LIMIT = 20


@dataclass(frozen=True)
class Kind:
    """One kind of run: a server and the requests its runs replay."""

    key: str
    label: str
    url: str
    data: Path
    first: dict[str, Any] = field(default_factory=dict)  # the first request, for checks


@dataclass
class Measured:
    kind: str
    round: int
    wrk: WrkResult
    routing: dict[tuple[str, str, str], float] = field(default_factory=dict)
    cpu: CpuSplit | None = None  # where the box's CPU went during the run (mixed runs)


def lua(value: Any) -> str:
    """A Lua literal of strings, numbers, booleans, None, lists and string-keyed dicts."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string of ASCII is a valid Lua string literal
    if isinstance(value, list):
        return "{" + ", ".join(lua(v) for v in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{lua(k)}] = {lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no Lua literal for {type(value).__name__}")


def write_requests(path: Path, requests: list[dict[str, Any]], *,
                   fresh_cursor: bool = False) -> Path:
    path.write_text("return " + lua({"requests": requests, "fresh_cursor": fresh_cursor})
                    + "\n")
    return path


def ab_kinds(root: Path, service: str, plain: str, site: dict[str, Any],
             users: list[dict[str, str]]) -> dict[str, Kind]:
    """The A/B runs' requests. Reads use the first half of the site's threads and writes the
    second, so writes never make the cached pages stale."""
    ids = [t["id"] for t in site["threads"]]
    reads, writes = ids[: len(ids) // 2], ids[len(ids) // 2:]
    api, own = f"/api/sites/{site['slug']}/threads", f"/sites/{site['tenant_id']}/threads"
    key = {"X-Api-Key": site["api_key"]}
    json_type = {"Content-Type": "application/json"}
    page = f"/comments?limit={PAGE_LIMIT}"

    def get(paths: list[str], headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
        return [{"method": "GET", "path": p, "headers": headers or {}} for p in paths]

    posts = [{"method": "POST", "path": f"{api}/{t}/comments",
              "headers": {**key, **json_type, "X-User-Token": users[n % len(users)]["token"]},
              "body": json.dumps({"body": f"benchmark comment {n}"})}
             for n, t in enumerate(writes)]
    plain_posts = [{"method": "POST", "path": f"{own}/{t}/comments", "headers": json_type,
                    "body": json.dumps({"body": f"benchmark comment {n}",
                                        "author": f"load-{n % len(users)}"})}
                   for n, t in enumerate(writes)]
    specs = {
        "service_row": ("service: GET thread", service,
                        get([f"{api}/{t}" for t in reads], key), False),
        "plain_row": ("plain: GET thread", plain, get([f"{own}/{t}" for t in reads]), False),
        "service_cached": ("service: page, cached", service,
                           get([f"{api}/{t}{page}" for t in reads], key), False),
        "service_built": ("service: page, built", service,
                          get([f"{api}/{t}{page}" for t in reads], key), True),
        "plain_built": ("plain: page, built", plain,
                        get([f"{own}/{t}{page}" for t in reads]), True),
        "service_write": ("service: POST comment", service, posts, False),
        "plain_write": ("plain: POST comment", plain, plain_posts, False),
    }
    return {name: Kind(name, label, url, write_requests(root / f"{name}.lua", requests,
                                                       fresh_cursor=fresh), requests[0])
            for name, (label, url, requests, fresh) in specs.items()}


def check_shapes(kinds: dict[str, Kind]) -> list[str]:
    """One request of each GET kind, answered 200, and the service's and the plain project's
    answers with the same JSON keys; returns the lines to report."""
    def first(kind: Kind) -> dict[str, Any]:
        path = kind.first["path"]
        status, body = mixed.http("GET", kind.url + path, headers=kind.first["headers"])
        if status != 200:
            raise BenchmarkFailed(f"{kind.label}: GET {path} answered {status}: {body[:300]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def keys(answer: dict[str, Any]) -> list[str]:
        items = answer.get("items")
        inner = sorted(items[0]) if items else []
        return sorted(answer) + [f"items.{k}" for k in inner]

    lines = []
    for service, plain in (("service_row", "plain_row"), ("service_cached", "plain_built")):
        mine, theirs = keys(first(kinds[service])), keys(first(kinds[plain]))
        if mine != theirs:
            raise BenchmarkFailed(f"JSON shapes differ: {kinds[service].label} {mine} vs "
                                  f"{kinds[plain].label} {theirs}")
        lines.append(f"same JSON keys: {kinds[service].label} / {kinds[plain].label}: "
                     f"{', '.join(mine)}")
    return lines


def run_kind(kind: Kind, args: argparse.Namespace, duration: float, round_: int,
             *, connections: int | None = None, timeout: float = 5.0) -> Measured:
    # A number per run: fresh cursors of one run are never those of another.
    result = run_wrk(kind.label, kind.url, REQUESTS_LUA, str(kind.data), str(next(_RUNS)),
                     duration=duration,
                     threads=args.threads, connections=connections or args.connections,
                     timeout=timeout, counters="REQUESTS")
    return Measured(kind.key, round_, result)


def ab_phase(kinds: dict[str, Kind], pairs: list[tuple[str, str]],
             args: argparse.Namespace) -> list[Measured]:
    """Warm every kind, then per round each pair A, B (B, A in even rounds)."""
    runs = []
    for kind in kinds.values():
        runs.append(run_kind(kind, args, args.warmup, 0))
    for round_ in range(1, args.rounds + 1):
        for a, b in pairs:
            for name in ((a, b) if round_ % 2 else (b, a)):
                measured = run_kind(kinds[name], args, args.duration, round_)
                runs.append(measured)
                print_run(measured)
    return runs


def mixed_phase(service: str, data: Path, args: argparse.Namespace) -> list[Measured]:
    runs = []
    for round_ in range(0, args.mixed_rounds + 1):  # round 0: warm-up
        before = mixed.read_routing(service)
        cpu = CpuSplit()
        with cpu.window():
            result = run_wrk("mixed 90/10", service, mixed.LUA, str(data),
                             duration=args.warmup if round_ == 0 else args.mixed_duration,
                             threads=args.threads, connections=args.connections,
                             counters="LOADMIX")
        measured = Measured("mixed", round_, result,
                            mixed.delta(mixed.read_routing(service), before), cpu)
        runs.append(measured)
        if round_:
            print_run(measured)
    return runs


def print_run(run: Measured) -> None:
    w = run.wrk
    cache = ",".join(f"{k}:{v}" for k, v in sorted(w.counters.get("cache", {}).items()))
    print(f"  round {run.round} {w.label:<26} {w.rps:9.1f} req/s  p50 {w.p50_ms:7.2f} ms  "
          f"p99 {w.p99_ms:8.2f} ms  failed {w.failed}" + (f"  X-Cache {cache}" if cache else ""),
          flush=True)
