"""What one request costs the service, beside the plain Django baseline, in figures that do not
depend on the machine's load: a single-row read, a comment page from the cache, a comment page
built from the database (a cursor never asked before) and a comment write, each driven one at
a time through the WSGI application in a process of its own (request_cost_runner), no HTTP
server in between (Gunicorn's share is the same for both).

    .venv/bin/python -m tests.benchmarks.request_cost [--dir TOPOLOGY] [--requests 300]
                                                      [--callgrind] [--cpu]

Per kind and side it prints Python function calls, psycopg's waits on its connections (each
statement sent is one; a connection's setup adds some) and Redis commands per request
(cProfile); with --callgrind, instructions per request (valgrind's callgrind, the main
thread, user space only: a round trip's cost in the kernel, PgBouncer, PostgreSQL and Redis is
not in it, which is why the round trips are counted too; the worker's once-a-second background
work is left out); with --cpu, CPU microseconds per request (noisier on a busy machine).

Without --dir it starts a throwaway topology of its own (no service, no monitoring; ports from
SHARDSVC_TEST_BASE_PORT or 30400) and removes it at the end. With --dir, a running topology
made by `python -m deploy.topology up --dir ...`. Either way it seeds one site (`seed_demo`,
prefix `cost`) the first time. The plain baseline reads the site's shard primary through the
same PgBouncer; the service reads its replica, as bench_perf compares them.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import IO, Any

from deploy.layout import LocalLayout
from deploy.topology import PROJECT_DIR, LocalTopology
from tests.benchmarks import mixed

RUNNER = "tests.benchmarks.request_cost_runner"
# A runner under valgrind runs about a hundred times slower: minutes per step, never half an hour.
CALLGRIND_TIMEOUT = 1800
PAIRS = [("row", "service"), ("row", "plain"), ("cached", "service"), ("built", "service"),
         ("built", "plain"), ("write", "service"), ("write", "plain")]


def runner_env(topology: LocalTopology, site: dict[str, Any], folder: Path) -> dict[str, str]:
    env = topology.service_env(
        # Writes as one user at full speed: past any per-user limit.
        SHARDSVC_THROTTLE_WRITES="off",
        PROMETHEUS_MULTIPROC_DIR=str(folder / "metrics"),
        PLAIN_DSN=topology.pooled_dsn(site["shard"]),
        # Fixed hashing: the same run gives the same instruction counts.
        PYTHONHASHSEED="0",
    )
    (folder / "metrics").mkdir(exist_ok=True)
    return env


def run_one(env: dict[str, str], target: str, kind: str, n: int, mode: str,
            site_file: Path, log: Path) -> dict[str, Any]:
    if target == "plain":
        env = {**env, "DJANGO_SETTINGS_MODULE": "tests.benchmarks.plain_django.settings"}
    command = [sys.executable, "-m", RUNNER, target, kind, str(n), mode, str(site_file)]
    with log.open("ab") as errors:
        if mode != "callgrind":
            done = subprocess.run(command, cwd=PROJECT_DIR, env=env, stdout=subprocess.PIPE,
                                  stderr=errors, check=True, text=True)
            result: dict[str, Any] = json.loads(done.stdout.splitlines()[-1])
            return result
        out = log.parent / f"callgrind.{target}.{kind}"
        child = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--instr-atstart=no", "--separate-threads=yes",
             f"--callgrind-out-file={out}", *command],
            cwd=PROJECT_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=errors, text=True)
        assert child.stdin is not None and child.stdout is not None
        try:
            for line, switch in (("ready", "on"), ("done", "off")):
                if _line_within(child.stdout, CALLGRIND_TIMEOUT).strip() != line:
                    raise SystemExit(f"the {target} {kind} runner failed: see {log}")
                subprocess.run(["callgrind_control", "-i", switch, str(child.pid)],
                               capture_output=True, check=True, timeout=CALLGRIND_TIMEOUT)
                child.stdin.write("go\n")
                child.stdin.flush()
            result = json.loads(_line_within(child.stdout, CALLGRIND_TIMEOUT))
            child.wait(timeout=CALLGRIND_TIMEOUT)
        except (TimeoutError, subprocess.TimeoutExpired):
            raise SystemExit(f"the {target} {kind} runner under valgrind stalled for "
                             f"{CALLGRIND_TIMEOUT} s (seen now and then on a busy machine): "
                             f"run again; see {log}") from None
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    # The main thread's file (-01): the requests and everything they wait on run there. Native
    # threads (the replica checks) run per second, not per request.
    main = Path(f"{out}-01")
    totals = next(line for line in main.read_text().splitlines() if line.startswith("totals:"))
    result["instructions"] = int(totals.split()[1]) / n
    return result


def _line_within(stream: IO[str], seconds: float) -> str:
    """The next line of `stream`, or TimeoutError after `seconds` without one."""
    if not select.select([stream], [], [], seconds)[0]:
        raise TimeoutError
    return stream.readline()


def site_of(topology: LocalTopology, folder: Path) -> dict[str, Any]:
    keys = topology.layout.root / "request-cost-site.json"
    if not keys.exists():
        mixed.seed(topology, keys, sites=1, comments=2_000, threads_per_site=40, prefix="cost",
                   zipf=0)
    site: dict[str, Any] = json.loads(keys.read_text())["sites"][0]
    (folder / "site.json").write_text(json.dumps(site))
    return site


def measure(topology: LocalTopology, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="request-cost-", dir="/tmp"))
    site = site_of(topology, folder)
    env = runner_env(topology, site, folder)
    log = folder / "runner.log"
    modes = ["profile"] + (["cpu"] if args.cpu else []) + (["callgrind"] if args.callgrind else [])
    rows = []
    for kind, target in PAIRS:
        row: dict[str, Any] = {}
        for mode in modes:
            row.update(run_one(env, target, kind, args.requests, mode, folder / "site.json", log))
        rows.append(row)
        print(f"[cost] {target} {kind}: {json.dumps(row)}", flush=True)
    print(f"\nPer request, {args.requests} requests one at a time after 200 untimed "
          f"(runner log: {log})")
    head = f"  {'request':<16} {'python calls':>12} {'pg waits':>8} {'redis cmds':>10}"
    head += f" {'cpu us':>8}" if args.cpu else ""
    head += f" {'instructions':>13}" if args.callgrind else ""
    print(head)
    for row in rows:
        line = (f"  {row['target'] + ' ' + row['kind']:<16} {row['python_calls']:>12,.0f} "
                f"{row['database_waits']:>8.2f} {row['redis_commands']:>10.2f}")
        line += f" {row['cpu_us']:>8,.0f}" if args.cpu else ""
        line += f" {row['instructions']:>13,.0f}" if args.callgrind else ""
        print(line + f"   {row['statuses']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.request_cost",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", type=Path, help="a running topology's folder (default: a new one)")
    p.add_argument("--requests", type=int, default=300, help="timed requests per run (300)")
    p.add_argument("--callgrind", action="store_true", help="count instructions (slow)")
    p.add_argument("--cpu", action="store_true", help="CPU time per request")
    args = p.parse_args(argv)
    if args.dir is not None:
        layout = LocalLayout.load(args.dir.resolve())
        if layout is None:
            p.error(f"{args.dir} holds no topology (python -m deploy.topology up --dir ...)")
        measure(LocalTopology(layout, echo=lambda message: None), args)
        return 0
    from tests.conftest import make_topology

    topology = make_topology("shardsvc-cost-", shards=2, replicas=1,
                             start_port=int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "30400")))
    try:
        topology.up(service=False, migrate=True)
        measure(topology, args)
    finally:
        topology.destroy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
