"""Live updates: open Server-Sent Event streams held by the gevent workers, memory per stream,
and how long an event takes from the write to every open stream.

    .venv/bin/python -m tests.benchmarks.bench_live [--streams 1000 --events 20]

One throwaway topology (ports from SHARDSVC_TEST_BASE_PORT or 25400; destroyed at the end): the
service under Gunicorn (2 gevent workers). It opens `--streams` streams on one thread (as many
as the box allows, up to the number asked), reads the workers' resident memory before and after,
then posts `--events` comments one after another and records, for each stream, when each event
arrived: delivery time is arrival minus the moment the POST was sent (so it includes the write
itself). Prints one line, then the live bound (a change reaches every open page within
LIVE_BOUND_MS) with its measured value and PASS/FAIL; exits 1 only if a stream missed an event
or could not be opened (a benchmark reports, it does not judge).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from deploy.processes import children, read_pid
from tests.api_client import UNREACHED_THROTTLES, create_site
from tests.conftest import make_topology
from tests.live_client import Stream

# The bound a change has to reach every other open page by (the widget's live updates): timed
# here, not in tests/test_widget.py, which checks that changes arrive without a reload.
LIVE_BOUND_MS = 2000.0


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def workers_rss(service) -> int:
    master = read_pid(service.pidfile)
    assert master is not None
    return sum(rss_kib(pid) for pid in children(master))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--events", type=int, default=20)
    args = parser.parse_args(argv)
    topology = make_topology("shardsvc-bench-live-", shards=1, replicas=1)
    streams: list[Stream] = []
    try:
        topology.up(service=False, migrate=True)
        service = topology.start_service(name="service", **UNREACHED_THROTTLES)
        site = create_site(service, topology, prefix="live").as_user("writer", "W")
        thread = site.thread()
        url = f"{site.root}/threads/{thread}/events?"
        time.sleep(1)
        before = workers_rss(service)
        for _ in range(args.streams):
            s = Stream(url, {"X-Api-Key": site.key}).start()
            streams.append(s)
        opened = [s for s in streams if s.opened.wait(30) and s.status == 200]
        time.sleep(1)
        after = workers_rss(service)
        sent: dict[str, float] = {}
        for i in range(args.events):
            at = time.monotonic()
            sent[site.comment(thread, f"event {i}")["id"]] = at
            time.sleep(0.05)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(len(s.events) < args.events for s in opened):
            time.sleep(0.1)
        delays = [arrived - sent[event["comment"]["id"]]
                  for s in opened for _, event, arrived in s.events]
        missed = sum(args.events - len(s.events) for s in opened)
        per_stream = (after - before) / max(1, len(opened))
        print(f"live: {len(opened)}/{args.streams} open SSE streams on 2 gevent workers, "
              f"workers' RSS +{(after - before) / 1024:.1f} MiB ({per_stream:.1f} KiB/stream), "
              f"{len(delays)} deliveries of {args.events} events: "
              f"p50 {percentile(delays, 0.5) * 1000:.1f} ms, "
              f"p99 {percentile(delays, 0.99) * 1000:.1f} ms, "
              f"max {max(delays) * 1000:.1f} ms, missed {missed}")
        worst = max(delays) * 1000
        verdict = "PASS" if worst <= LIVE_BOUND_MS and not missed else "FAIL"
        print(f"{verdict}  live delivery, slowest of {len(delays)}: {worst:,.1f} ms   "
              f"target <= {LIVE_BOUND_MS:,.0f} ms" + (f"   ({missed} missed)" if missed else ""))
        return 1 if missed or len(opened) < args.streams else 0
    finally:
        for s in streams:
            s.close()
        topology.destroy()


if __name__ == "__main__":
    sys.exit(main())
