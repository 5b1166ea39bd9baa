"""Topology changes without restarts (shards/live_topology.py): a running service, under a small
load of reads and writes, follows `up --shards 3` (a third shard) with no failed request and the
same worker processes, and serves a tenant placed on the new shard; a replica removed from the
topology file is no longer used, and used again once it is back; a broken file is ignored.

The pytest process's Django belongs to the session topology, so this module starts its own."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.processes import read_pid
from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from tests.api_client import UNREACHED_THROTTLES, SiteClient, create_site
from tests.client import get, wait_until
from tests.conftest import make_topology

pytestmark = pytest.mark.slow


def worker_pids(service: ServiceProcess) -> set[int]:
    master = read_pid(service.pidfile)
    assert master is not None
    return {master, *service.worker_pids()}


class Load:
    """Two clients reading and writing a site as fast as they get answers; every answer kept."""

    def __init__(self, site: SiteClient, thread: str) -> None:
        self.site, self.thread = site, thread
        self.statuses: list[int] = []
        self.failures: list[tuple[int, object]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n,), daemon=True)
                         for n in range(2)]
        for worker in self._threads:
            worker.start()

    def _run(self, n: int) -> None:
        # With the causal token of the thread's creation, as a browser keeps its cookie.
        client = SiteClient(self.site.base, self.site.slug, self.site.key, self.site.shard,
                            self.site.user_token, self.site.causal_token)
        count = 0
        while not self._stop.is_set():
            count += 1
            if count % 4 == 0:
                answer = client.call("POST", f"/threads/{self.thread}/comments",
                                     {"body": f"load {n} {count}"}, user=True)
            else:
                answer = client.call("GET", f"/threads/{self.thread}/comments")
            self.statuses.append(answer.status)
            if answer.status not in (200, 201):
                self.failures.append((answer.status, answer.body))

    def stop(self) -> None:
        self._stop.set()
        for worker in self._threads:
            worker.join(30)


def served_by(site: SiteClient, thread: str, *, reads: int = 6) -> set[str]:
    """Which databases served `reads` reads of the thread (both workers, likely)."""
    url = f"{site.root}/_diag/threads/{thread}"
    headers = {causal.HEADER: site.causal_token} if site.causal_token else {}
    found = set()
    for _ in range(reads):
        answer = get(url, headers=headers)
        assert answer.status == 200, answer.body
        found.add(answer.body["served_by"])
    return found


def knows_shard(service: ServiceProcess, shard: str, *, reads: int = 6) -> bool:
    return all(shard in get(f"{service.url}/readyz/shards").body["databases"]
               for _ in range(reads))


def without_replica(text: str, alias: str) -> str:
    """The topology file's text without `alias`'s [[...replicas]] table (three lines)."""
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("dsn = ")
              and line.rstrip('"').endswith(f"/{alias}"))
    assert lines[at - 1].endswith(".replicas]]") and lines[at + 1].startswith("direct_dsn")
    return "\n".join(lines[: at - 1] + lines[at + 2:]) + "\n"


def publish(path: Path, text: str) -> None:
    tmp = path.with_suffix(".edit")
    tmp.write_text(text)
    tmp.replace(path)


def test_a_running_service_follows_topology_changes_without_restarting() -> None:
    topo = make_topology("shardsvc-live-", shards=2, replicas=1, start_port=27200)
    grown = LocalTopology(replace(topo.layout, shards=3), echo=topo.echo)
    try:
        topo.up(service=False, migrate=True)
        service = topo.start_service(name="service", SHARDSVC_URLCONF="tests.urls",
                                     **UNREACHED_THROTTLES)
        pids = worker_pids(service)
        assert len(pids) == 3  # the master and 2 workers
        busy = create_site(service, topo, prefix="busy", shard="shard_0").as_user("loader")
        busy_thread = busy.thread()

        # A third shard, live, under load.
        load = Load(busy, busy_thread)
        try:
            time.sleep(1.0)  # the load runs before the change too
            grown.up(service=False, migrate=True)
            wait_until(lambda: knows_shard(service, "shard_2"), timeout=15,
                       what="every worker knows shard_2")
            time.sleep(1.0)  # and after it
        finally:
            load.stop()
        print(f"\n[live topology] {len(load.statuses)} requests during `up --shards 3`, "
              f"{len(load.failures)} failed")
        assert load.statuses and not load.failures, load.failures[:5]

        # A tenant placed on the new shard is served by the same workers, its reads by the
        # new shard's replica once it has replayed the writes.
        newcomer = create_site(service, topo, prefix="newcomer", shard="shard_2").as_user("u")
        thread = newcomer.thread()
        posted = newcomer.call("POST", f"/threads/{thread}/comments", {"body": "on shard_2"},
                               user=True)
        assert posted.status == 201, posted.body
        answer = newcomer.call("GET", f"/threads/{thread}/comments")
        assert answer.status == 200 and answer.body["items"][0]["body"] == "on shard_2"
        wait_until(lambda: served_by(newcomer, thread) == {"shard_2_replica_1"}, timeout=15,
                   what="shard_2's replica used")
        assert worker_pids(service) == pids, "workers were restarted"

        # A replica removed from the file is no longer used; put back, it is used again.
        path = topo.layout.topology_file
        full = path.read_text()
        publish(path, without_replica(full, "shard_0_replica_1"))
        wait_until(lambda: served_by(busy, busy_thread) == {"shard_0"}, timeout=15,
                   what="shard_0's replica no longer used")
        # A broken file is ignored: the workers keep serving on the map they have.
        publish(path, full.replace("[control]", "[control", 1))
        time.sleep(2.5)  # two polls of every worker
        assert served_by(busy, busy_thread) == {"shard_0"}
        publish(path, full)
        wait_until(lambda: served_by(busy, busy_thread) == {"shard_0_replica_1"}, timeout=15,
                   what="shard_0's replica used again")
        assert worker_pids(service) == pids, "workers were restarted"
        log = (service.log).read_text()
        assert "topology file changed but not applied" in log
    finally:
        grown.destroy()
