"""Benchmark (not a test): where a planned switchover's write pause goes, step by step.

    .venv/bin/python -m tests.benchmarks.bench_switchover [--rounds 5] [--writes 200]
        [--no-fence]

Starts its own highly available topology (control + 1 shard under Patroni, 1 replica each,
3-member etcd, fsync off as in the tests, PostgreSQL logging its LOG lines with epoch
milliseconds) and, while a writer inserts rows through PgBouncer's shard_0 entry at --writes per
second, runs `switchover()` on shard_0 --rounds times. Each round lines up, in seconds from the
moment POST /switchover was sent:

- the writer's last acknowledged write before the gap and its first one after (the pause);
- from the old leader's PostgreSQL log: Patroni's CHECKPOINT before the stop, the fast shutdown
  request and "database system is shut down"; from its Patroni log: "Leader key released";
- from the candidate's Patroni log: the leader lock acquired; from its PostgreSQL log: the
  promote request and "database system is ready to accept connections";
- /primary answering 200 on the new leader (polled here every 20 ms);
- the leader follower's log line after it rewrote pgbouncer.ini and reloaded PgBouncer.

Then the median of each step over the rounds. Everything runs on one machine, so wall clocks
compare directly.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import itertools
import os
import re
import statistics
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from deploy.layout import Node
from deploy.topology import LocalTopology
from migrations_tools.switchover import switchover
from shards import patroni, pg
from shards.topology import load_shard_map
from tests.benchmarks.perf_report import loadavg_text, parse_loadavg
from tests.conftest import make_topology
from tests.ha_writes import CREATE_SQL, GRANT_SQL, Writer

CLUSTER = "shard_0"
# LOG lines (shutdown, promotion, checkpoints) with the epoch in milliseconds; the log file in
# each data folder (log/postgresql.log), read by this benchmark alone.
PG_LOGGING = {
    "log_min_messages": "log",
    "log_checkpoints": "on",
    "log_line_prefix": "'%n [%p] '",
    "logging_collector": "on",
    "log_directory": "'log'",
    "log_filename": "'postgresql.log'",
}

# (step, member whose log holds it: "old" or "new", log: "pg" or "patroni", text in the line)
LOG_STEPS = [
    ("checkpoint start (old)", "old", "pg", "checkpoint starting: immediate force wait"),
    ("checkpoint end (old)", "old", "pg", "checkpoint complete"),
    ("shutdown request (old)", "old", "pg", "received fast shutdown request"),
    ("shut down (old)", "old", "pg", "database system is shut down"),
    ("leader key released (old)", "old", "patroni", "Leader key released"),
    ("lock acquired (new)", "new", "patroni", "acquiring session lock"),
    ("promote request (new)", "new", "pg", "received promote request"),
    ("promoted (new)", "new", "pg", "database system is ready to accept connections"),
]
ORDER = ["last write before", *(s[0] for s in LOG_STEPS), "/primary 200 (new)",
         "PgBouncer re-pointed", "first write after", "POST answered"]


def pg_log_times(node: Node, text: str, since: float) -> list[float]:
    path = node.datadir / "log" / "postgresql.log"
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        head, _, rest = line.partition(" ")
        try:
            at = float(head)
        except ValueError:
            continue
        if at >= since and text in rest:
            found.append(at)
    return found


def python_log_times(path: Path, text: str, since: float) -> list[float]:
    """Times of lines of a Python log ('2026-11-30 09:14:01,123 ...', local time)."""
    found = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        match = re.match(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ", line)
        if not match or text not in line:
            continue
        stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S")
        at = time.mktime(stamp.timetuple()) + int(match.group(2)) / 1000
        if at >= since:
            found.append(at)
    return found


class PrimaryWatch:
    """Polls every member's /primary every 20 ms: when each first answered 200."""

    def __init__(self, topo: LocalTopology) -> None:
        self.urls = topo.member_urls(CLUSTER)
        self.first_200: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PrimaryWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            for url in self.urls:
                if patroni.call(url, "/primary", timeout=0.5).status == 200:
                    self.first_200.setdefault(url, time.time())
                else:
                    self.first_200.pop(url, None)
            self._stop.wait(0.02)


@dataclasses.dataclass
class Round:
    old: str
    new: str
    steps: dict[str, float]  # seconds after POST /switchover
    pause: float
    failed_writes: int
    errors: list[tuple[float, str]]  # (seconds after POST /switchover, message)


def one_round(topo: LocalTopology, writes: float, fence: bool, start_id: int) -> Round:
    topo.wait_cluster_streaming(CLUSTER, timeout=120)
    old = topo.leader(CLUSTER)
    cluster = load_shard_map(topo.layout.topology_file).shard(CLUSTER)
    pooled = f"host=127.0.0.1 port={topo.layout.pgbouncer_port} user=app dbname={CLUSTER}"
    offset = time.time() - time.monotonic()
    with PrimaryWatch(topo) as watch, Writer(pooled, start_id=start_id, rate=writes) as writer:
        time.sleep(2)  # steady writes first
        result = switchover(cluster, timeout=60, fence=fence)
        time.sleep(1.5)  # the follower's log line, writes after
    new = topo.node(result.new_leader)
    posted = result.marks["requested"]
    acks = [acked + offset for _, _, acked in writer.acked]
    gaps = [(b - a, a, b) for a, b in itertools.pairwise(acks) if b > posted]
    pause, last, first = max(gaps) if gaps else (0.0, posted, posted)
    steps = {"last write before": last, "first write after": first,
             "POST answered": result.marks["answered"]}
    for step, whose, log, text in LOG_STEPS:
        node = old if whose == "old" else new
        times = (pg_log_times(node, text, posted - 5) if log == "pg" else
                 python_log_times(node.datadir.parent / "patroni.log", text, posted - 5))
        if times:
            steps[step] = times[0]
    primary = watch.first_200.get(topo.rest_url(new))
    if primary is not None:
        steps["/primary 200 (new)"] = primary
    repointed = python_log_times(topo.layout.root / "pgbouncer" / "follower.log",
                                 f"PgBouncer now points at {new.alias}", posted - 5)
    if repointed:
        steps["PgBouncer re-pointed"] = repointed[0]
    errors = [(at + offset - posted, text) for at, text in writer.errors]
    return Round(old.alias, new.alias, {k: v - posted for k, v in steps.items()}, pause,
                 len(writer.errors), errors)


def error_summary(errors: list[tuple[float, str]]) -> Iterator[str]:
    """Failed writes by message: how many, first and last (s after POST /switchover)."""
    kinds: dict[str, list[float]] = {}
    for at, text in errors:
        kinds.setdefault(text.splitlines()[0][:90], []).append(at)
    for text, times in sorted(kinds.items(), key=lambda item: item[1][0]):
        yield f"  {len(times):>4} x {min(times):6.2f} .. {max(times):6.2f}  {text}"


def report(rounds: list[Round]) -> Iterator[str]:
    yield f"{'step (s after POST /switchover)':<34}" + "".join(
        f"{i + 1:>8}" for i in range(len(rounds))) + f"{'median':>9}"
    for step in ORDER:
        values = [r.steps.get(step) for r in rounds]
        known = [v for v in values if v is not None]
        yield f"{step:<34}" + "".join(f"{v:>8.2f}" if v is not None else f"{'-':>8}"
                                      for v in values) + (
            f"{statistics.median(known):>9.2f}" if known else f"{'-':>9}")
    pauses = [r.pause for r in rounds]
    yield f"{'write pause (longest gap)':<34}" + "".join(f"{p:>8.2f}" for p in pauses) + \
        f"{statistics.median(pauses):>9.2f}"
    yield f"{'failed writes':<34}" + "".join(f"{r.failed_writes:>8}" for r in rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=float, default=200, help="writes/s through PgBouncer")
    parser.add_argument("--no-fence", dest="fence", action="store_false")
    args = parser.parse_args(argv)
    start = int(os.environ.get("SHARDSVC_TEST_BASE_PORT", "26900"))
    topo = make_topology("shardsvc-bench-switchover-", shards=1, replicas=1, ha=True,
                         start_port=start)
    topo = LocalTopology(dataclasses.replace(
        topo.layout, pg_settings={**topo.layout.pg_settings, **PG_LOGGING}), echo=topo.echo)
    load = loadavg_text(parse_loadavg(Path("/proc/loadavg").read_text()), os.cpu_count() or 0)
    rounds: list[Round] = []
    try:
        topo.up(service=False, migrate=False)
        with pg.connect(topo.leader(CLUSTER).direct_dsn) as conn:
            conn.execute(CREATE_SQL)
            conn.execute(GRANT_SQL)
        for n in range(args.rounds):
            rounds.append(one_round(topo, args.writes, args.fence, start_id=n * 1_000_000))
            done = rounds[-1]
            print(f"round {n + 1}: {done.old} -> {done.new}, pause {done.pause:.2f} s, "
                  f"{done.failed_writes} failed writes", flush=True)
            for line in error_summary(done.errors):
                print(line, flush=True)
    finally:
        topo.destroy()
    print(f"\n{CLUSTER}: switchover under {args.writes:.0f} writes/s through PgBouncer, fence "
          f"{'on' if args.fence else 'off'}; load average at the start {load}, at the end "
          f"{loadavg_text(parse_loadavg(Path('/proc/loadavg').read_text()), os.cpu_count() or 0)}")
    for line in report(rounds):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
