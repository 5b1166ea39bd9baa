"""Benchmark (not a test): failover and switchover of a shard under Patroni, through PgBouncer.

    .venv/bin/python -m tests.benchmarks.bench_failover [--kills 3 --switchovers 3 --rate 200]

Starts its own highly available topology (control + one shard, one replica each, durable unless
--no-fsync) and, while writers insert through PgBouncer's entry for the shard's leader at
--rate writes/s in all (4 threads), repeats:

- kill: `kill -9` of the leader's postmaster (its Patroni stays up and fails over);
- switchover: `migrations_tools.switchover.switchover()`, what `manage.py switchover` runs.

Each round reports the write pause a client saw (the longest wait between two acknowledged
writes of one writer), failed writes, and acknowledged ids against the ids the new leader holds.
Last, the targets: writes back within 5 s of a kill, no acknowledged write lost, switchover
pause at most 3 s (issue 12), PASS/FAIL. Only the database path is measured here: the service's
own holding and retrying of writes during a failover is not part of it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

from deploy.topology import LocalTopology
from migrations_tools.switchover import switchover
from shards import pg
from shards.topology import load_shard_map
from tests.benchmarks.perf_report import Target, loadavg_text, parse_loadavg
from tests.conftest import make_topology
from tests.ha_writes import CREATE_SQL, GRANT_SQL, Writer, longest_gap

CLUSTER = "shard_0"
WRITERS = 4
KILL_TARGET = 5.0  # seconds until writes succeed again (issue 12)
SWITCHOVER_TARGET = 3.0  # client-seen write pause, p99 (issue 12)


@dataclasses.dataclass
class Round:
    kind: str
    pause: float
    failed: int  # write attempts that failed (each writer retries every ~20 ms)
    acked: int
    lost: int
    error: str  # the most frequent error


def one_round(topo: LocalTopology, kind: str, rate: float, first_id: int) -> Round:
    topo.wait_cluster_streaming(CLUSTER, timeout=120)
    old = topo.leader(CLUSTER)
    dsn = f"host=127.0.0.1 port={topo.layout.pgbouncer_port} user=app dbname={CLUSTER}"
    writers = [Writer(dsn, start_id=first_id + n * 10_000_000, rate=rate / WRITERS)
               for n in range(WRITERS)]
    with ExitStack() as stack:
        for writer in writers:
            stack.enter_context(writer)
        time.sleep(1)
        started = time.monotonic()
        if kind == "kill":
            topo.kill_postmaster(old)
        else:
            switchover(load_shard_map(topo.layout.topology_file).shard(CLUSTER), timeout=60)
        deadline = started + 60
        while time.monotonic() < deadline and not all(
                len(w.sent_after(started + 0.5)) > 5 and topo.pgbouncer_leaders()[CLUSTER]
                != old.alias for w in writers):
            time.sleep(0.1)
        time.sleep(1)
    with pg.connect(f"host=127.0.0.1 port={topo.leader(CLUSTER).port} user=postgres "
                    "dbname=app") as conn:
        present = {row[0] for row in conn.execute("SELECT id FROM ha_writes")}
    acked = set().union(*(w.ids for w in writers))
    errors = Counter(text.splitlines()[0] for w in writers for _, text in w.errors)
    return Round(kind, max(longest_gap(w, started) for w in writers), sum(errors.values()),
                 len(acked), len(acked - present),
                 errors.most_common(1)[0][0] if errors else "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--switchovers", type=int, default=3)
    parser.add_argument("--rate", type=float, default=200, help="writes/s, all writers")
    parser.add_argument("--no-fsync", dest="durable", action="store_false",
                        help="run PostgreSQL with fsync off, as the tests do")
    args = parser.parse_args(argv)
    base = make_topology("shardsvc-bench-failover-", shards=1, replicas=1, ha=True,
                         start_port=int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "26900")))
    topo = LocalTopology(dataclasses.replace(base.layout, durable=args.durable),
                         echo=lambda message: None)
    load_before = load_average()
    rounds: list[Round] = []
    try:
        topo.up(service=False, migrate=False)
        with pg.connect(f"host=127.0.0.1 port={topo.leader(CLUSTER).port} user=postgres "
                        "dbname=app") as conn:
            conn.execute(CREATE_SQL)
            conn.execute(GRANT_SQL)
        kinds = ["kill"] * args.kills + ["switchover"] * args.switchovers
        for number, kind in enumerate(kinds):
            rounds.append(one_round(topo, kind, args.rate, first_id=number * 100_000_000))
            done = rounds[-1]
            print(f"{kind:<10} pause {done.pause:5.2f} s, {done.failed} failed attempt(s), "
                  f"{done.acked} acked, {done.lost} lost; most frequent error: "
                  f"{done.error or '-'}", flush=True)
        load_after = load_average()
    finally:
        topo.destroy()

    print(f"\n{CLUSTER} under Patroni (1 replica, synchronous_mode), {WRITERS} writers at "
          f"{args.rate:.0f} writes/s through PgBouncer, fsync {'on' if args.durable else 'off'}, "
          f"{os.cpu_count()} CPU core(s)")
    for kind in ("kill", "switchover"):
        pauses = [r.pause for r in rounds if r.kind == kind]
        if pauses:
            print(f"{kind:<10} pause median {statistics.median(pauses):.2f} s, max "
                  f"{max(pauses):.2f} s over {len(pauses)} round(s)")
    print(f"load average at the start: {load_before}; at the end: {load_after}")
    kills = [r.pause for r in rounds if r.kind == "kill"]
    switches = [r.pause for r in rounds if r.kind == "switchover"]
    print(Target("kill -9 of the leader: writes back (max)", max(kills) if kills else None,
                 "s", at_most=KILL_TARGET).line())
    print(Target("acknowledged writes lost (all rounds)", sum(r.lost for r in rounds), "",
                 at_most=0, note=f"of {sum(r.acked for r in rounds)} acknowledged").line())
    print(Target("switchover: client-seen write pause (max)", max(switches) if switches
                 else None, "s", at_most=SWITCHOVER_TARGET).line())
    return 0


def load_average() -> str:
    return loadavg_text(parse_loadavg(Path("/proc/loadavg").read_text()), os.cpu_count() or 0)


if __name__ == "__main__":
    sys.exit(main())
