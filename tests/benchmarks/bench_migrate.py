"""Benchmark (not a test): migrating 8 shards with --jobs 8 against migrating 1 shard.

    .venv/bin/python -m tests.benchmarks.bench_migrate [--repeat 3] [--base-port P]

Starts its own throwaway topology (control + 8 shards, no replicas; ports from --base-port,
default $SHARDSVC_TEST_BASE_PORT or 26600), migrates control once, then
measures `manage.py migrate_shards` as a DBA runs it, in one run:

- 1 shard:            --shard shard_0
- 8 shards, --jobs 1: one after the other (what a loop of `migrate --database` does)
- 8 shards, --jobs 8: all at once

Before each measurement every shard is emptied (DROP SCHEMA public CASCADE), so each run applies
the same migrations from scratch; control stays migrated and is not part of the measured time.
The time is the command's own "N shard(s) in X s" (the shard phase), median of --repeat runs;
next to it the command's CPU in that phase (from the same line: the load of the machine barely
moves it, so it shows what each extra shard costs in Python), the CPU the shard servers spent
(PostgreSQL on the same cores: backends, DDL, commits; read from /proc) and the command's wall
time (Django start-up included). Last, the load average and the target: 8 shards with --jobs 8
in at most 2x the time of 1 shard, PASS/FAIL.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

from deploy.processes import children, stat_fields
from deploy.topology import LocalTopology
from tests.benchmarks.perf_report import Target, loadavg_text, parse_loadavg
from tests.conftest import make_topology

PROJECT_DIR = Path(__file__).resolve().parents[2]
SHARDS = 8
RESET_SQL = (
    "DROP SCHEMA public CASCADE; "
    "CREATE SCHEMA public AUTHORIZATION pg_database_owner; "
    "GRANT USAGE ON SCHEMA public TO PUBLIC"
)
RATIO_TARGET = 2.0  # 8 shards with --jobs 8 against 1 shard
SHARD_PHASE = re.compile(r"and (\d+) shard\(s\) in ([\d.]+)s \(jobs (\d+), ([\d.]+)s CPU\)")


def migrate_shards(topo: LocalTopology, *args: str) -> tuple[float, float, float, float]:
    """(shard phase seconds, its CPU seconds, the shard servers' CPU seconds, wall seconds) of
    one migrate_shards run."""
    servers_before = servers_cpu(topo)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "manage.py", "migrate_shards", *args], cwd=PROJECT_DIR,
        env=topo.service_env(), capture_output=True, text=True, check=False,
    )
    wall = time.monotonic() - started
    if run.returncode != 0:
        raise SystemExit(f"migrate_shards {' '.join(args)} failed:\n{run.stdout}\n{run.stderr}")
    match = SHARD_PHASE.search(run.stdout)
    if match is None:
        raise SystemExit(f"no timing line in the output:\n{run.stdout}")
    time.sleep(0.2)  # the run's backends have exited and been reaped: their CPU is counted
    return float(match.group(2)), float(match.group(4)), servers_cpu(topo) - servers_before, wall


def servers_cpu(topo: LocalTopology) -> float:
    """CPU seconds of the shard primaries' PostgreSQL so far: each postmaster's own, its
    exited backends' (reaped: cutime, cstime) and its running processes'."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for node in topo.layout.nodes():
        if node.role != "primary" or node.cluster == "default":
            continue
        postmaster = int((node.datadir / "postmaster.pid").read_text().split()[0])
        total += sum(_proc_times(postmaster, 4))
        for child in children(postmaster):
            total += sum(_proc_times(child, 2))
    return total / tick


def _proc_times(pid: int, fields: int) -> list[int]:
    try:
        stat = stat_fields(Path(f"/proc/{pid}/stat").read_text())
    except FileNotFoundError:  # exited since it was listed
        return []
    return [int(value) for value in stat[11:11 + fields]]


def reset_shards(topo: LocalTopology) -> None:
    for node in topo.layout.nodes():
        if node.role == "primary" and node.cluster != "default":
            with topo.admin_connect(node) as conn:
                conn.execute(RESET_SQL)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs per scenario (median)")
    parser.add_argument("--no-fsync", dest="durable", action="store_false",
                        help="run PostgreSQL with fsync off, as the tests do")
    parser.add_argument("--base-port", type=int,
                        default=int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "26600")),
                        help="first port to try for the topology")
    args = parser.parse_args(argv)
    base = make_topology("shardsvc-bench-migrate-", shards=SHARDS, replicas=0,
                         start_port=args.base_port)
    # Durable like production (the test harness turns fsync off): every commit of a migration
    # and of each django_migrations row waits for the disk, as it does on a real fleet.
    topo = LocalTopology(dataclasses.replace(base.layout, durable=args.durable),
                         echo=lambda message: None)
    scenarios = [
        ("1 shard", ["--shard", "shard_0"]),
        (f"{SHARDS} shards, --jobs 1", ["--jobs", "1"]),
        (f"{SHARDS} shards, --jobs {SHARDS}", ["--jobs", str(SHARDS)]),
    ]
    load_before = load_average()
    try:
        topo.up(service=False, migrate=False)
        migrate_shards(topo, "--shard", "shard_0")  # control, once; warms caches
        results: dict[str, list[tuple[float, ...]]] = {name: [] for name, _ in scenarios}
        for _ in range(args.repeat):
            for name, extra in scenarios:  # interleaved: drift over time hits all alike
                reset_shards(topo)
                results[name].append(migrate_shards(topo, *extra))
        load_after = load_average()
    finally:
        topo.destroy()

    medians = {
        name: tuple(statistics.median(r[i] for r in runs) for i in range(4))
        for name, runs in results.items()
    }
    print(f"migrate_shards, control + {SHARDS} shards (no replicas, fsync "
          f"{'on' if args.durable else 'off'}, {os.cpu_count()} CPU core(s)), median of "
          f"{args.repeat} run(s) each; shard phase = the command's own timing line")
    print(f"{'scenario':<22} {'shard phase':>12} {'phase CPU':>10} {'PostgreSQL CPU':>15} "
          f"{'command wall':>13}")
    for name, (phase, cpu, servers, wall) in medians.items():
        print(f"{name:<22} {phase:>11.2f}s {cpu:>9.2f}s {servers:>14.2f}s {wall:>12.2f}s")
    one = medians["1 shard"][0]
    sequential = medians[f"{SHARDS} shards, --jobs 1"][0]
    parallel = medians[f"{SHARDS} shards, --jobs {SHARDS}"][0]
    print(f"ratio {SHARDS} shards --jobs {SHARDS} / 1 shard: {parallel / one:.2f}x "
          f"(--jobs 1: {sequential / one:.2f}x; speed-up of --jobs {SHARDS} over --jobs 1: "
          f"{sequential / parallel:.2f}x)")
    many, one_shard = medians[f"{SHARDS} shards, --jobs {SHARDS}"], medians["1 shard"]
    print(f"CPU per shard past the first (--jobs {SHARDS}): the command "
          f"{(many[1] - one_shard[1]) / (SHARDS - 1) * 1000:.0f} ms, PostgreSQL "
          f"{(many[2] - one_shard[2]) / (SHARDS - 1) * 1000:.0f} ms")
    # The command and the shard servers share the cores: their CPU over the cores is the
    # least time any schedule needs, whatever overlaps.
    cores = os.cpu_count() or 1
    floor = (many[1] + many[2]) / cores
    print(f"{SHARDS} shards used {many[1] + many[2]:.2f} s of CPU (the command and PostgreSQL): "
          f"on {cores} core(s) at least {floor:.2f} s, {floor / one:.2f}x the time of 1 shard")
    print(f"load average at the start: {load_before}; at the end: {load_after}")
    print(Target(f"{SHARDS} shards --jobs {SHARDS} / 1 shard (shard phase)", parallel / one, "x",
                 at_most=RATIO_TARGET, note=f"{parallel:.2f}s / {one:.2f}s").line())
    return 0


def load_average() -> str:
    return loadavg_text(parse_loadavg(Path("/proc/loadavg").read_text()), os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
