"""Replica health while the service is saturated: CPU-heavy requests hold every worker's gevent
loop, and the replicas must stay healthy and keep serving token-less reads.

Tests assert behaviour, never timings; what the load did is printed (pytest -s).
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from tests.api_client import UNREACHED_THROTTLES
from tests.client import get, post, wait_until

pytestmark = pytest.mark.usefixtures("django_db")

WORKERS = 2
# Clients, each asking in turn for SPIN_MS of CPU (in SLICE_MS slices, yielding between them)
# and for a token-less read: every worker's loop always has a greenlet ready to run, for the
# whole run, with database I/O in it as under real load. One turn of a worker's loop runs a
# slice of each of its ~32 requests: longer than the 1 s check timeout. (Checks that were
# greenlets of that loop "timed out" before the loop ran them: every replica was marked
# unreachable, its socket shut, and reads went to the primaries.)
CLIENTS = 64
SPIN_MS = 500
SLICE_MS = 50
LOAD_SECONDS = 12.0
REPLICA = "shard_1_replica_1"


@pytest.fixture(scope="module")
def busy_service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="replica-load", port=topology.layout.http_port + 7, SHARDSVC_URLCONF="tests.urls",
        SHARDSVC_WORKERS=str(WORKERS), SHARDSVC_TIMEOUT="120",
        **UNREACHED_THROTTLES,  # every client calls from 127.0.0.1
    )
    try:
        yield svc
    finally:
        svc.stop()


def unhealthy_lines(service: ServiceProcess, offset: int) -> list[str]:
    with service.log.open("rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    return [line for line in text.splitlines() if "unhealthy" in line]


def test_replicas_stay_healthy_and_serve_reads_while_workers_are_saturated(
    busy_service: ServiceProcess, tenants,
) -> None:
    url = busy_service.url
    slug = tenants["b"].slug  # on shard_1
    created = post(f"{url}/api/sites/{slug}/_diag/threads")
    assert created.status == 201, created.body
    read_url = f"{url}/api/sites/{slug}/_diag/threads/{created.body['id']}"
    wait_until(lambda: get(read_url).body.get("served_by") == REPLICA, timeout=15,
               what=f"token-less reads served by {REPLICA}")

    # Each worker's latest check before the load, to tell that checks go on during it.
    before: dict[int, float] = {}

    def every_worker_asked() -> bool:
        states = get(f"{url}/_diag/replicas").body
        before[states["pid"]] = states["states"][REPLICA]["checked_at"]
        return len(before) == WORKERS

    # New connections go to whichever worker accepts first: ask until both have answered.
    wait_until(every_worker_asked, timeout=30, interval=0.01, what="both workers' states")

    log_offset = busy_service.log.stat().st_size
    stop = threading.Event()
    spins = Counter()
    served: Counter[str] = Counter()
    checked: dict[int, list[float]] = {}
    usable: list[list[str]] = []

    def spin() -> None:
        while not stop.is_set():
            answer = get(f"{url}/_diag/spin?ms={SPIN_MS}&slice_ms={SLICE_MS}", timeout=120)
            spins[answer.status] += 1
            read = get(read_url, timeout=120)
            assert read.status == 200, read.body
            served[read.body["served_by"]] += 1

    def observe() -> None:
        while not stop.is_set():
            read = get(read_url, timeout=120)
            assert read.status == 200, read.body
            served[read.body["served_by"]] += 1
            states = get(f"{url}/_diag/replicas", timeout=120).body
            checked.setdefault(states["pid"], []).append(states["states"][REPLICA]["checked_at"])
            usable.append(states["usable"]["shard_1"])

    began = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS + 4) as pool:
        futures = [pool.submit(spin) for _ in range(CLIENTS)]
        futures += [pool.submit(observe) for _ in range(4)]
        time.sleep(LOAD_SECONDS)
        stop.set()
        for future in futures:
            future.result()
    took = time.monotonic() - began

    unhealthy = unhealthy_lines(busy_service, log_offset)
    print(f"\n[replica load] {sum(spins.values())} spins of {SPIN_MS} ms ({SLICE_MS} ms slices) "
          f"on {WORKERS} workers "
          f"in {took:.1f} s; reads served by {dict(served)}; unhealthy transitions: "
          f"{len(unhealthy)}")
    for line in unhealthy[:10]:
        print("  ", line)
    assert spins == {200: sum(spins.values())} and sum(spins.values()) > 0
    assert unhealthy == []
    # Every token-less read of the run went to the replica, not to the primary.
    assert set(served) == {REPLICA}, served
    # The states kept updating under the load: each answer found the replica usable, which
    # needs a check within stale_after, and the workers answered with checks newer than the
    # load's start.
    assert usable and all(found == [REPLICA] for found in usable), usable
    # Whichever workers the observers reached (busy workers stop accepting new connections,
    # deploy/accept_balance.py) answered with checks made after their check before the load.
    assert checked and set(checked) <= set(before), (before, checked)
    for pid in checked:
        assert max(checked[pid]) > before[pid], (pid, before[pid], checked[pid])
