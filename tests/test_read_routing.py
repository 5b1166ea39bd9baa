"""Read routing through the real service: read-your-writes with lagging replicas, replica
share, replica failure mid-run, bad tokens, and directory changes reaching every worker."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.core import signing

from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from tests.client import get, post, wait_until

pytestmark = pytest.mark.usefixtures("django_db")


def set_apply_delay(topology: LocalTopology, alias: str, delay: str | None) -> None:
    with topology.admin_connect(topology.node(alias)) as conn:
        if delay is None:
            conn.execute("ALTER SYSTEM RESET recovery_min_apply_delay")
        else:
            conn.execute(f"ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'")
        conn.execute("SELECT pg_reload_conf()")


@pytest.fixture
def delayed_replica(topology: LocalTopology) -> Iterator[str]:
    set_apply_delay(topology, "shard_0_replica_1", "2s")
    try:
        yield "shard_0_replica_1"
    finally:
        set_apply_delay(topology, "shard_0_replica_1", None)


def create_thread(service: ServiceProcess, slug: str, headers=None):
    answer = post(f"{service.url}/api/sites/{slug}/_diag/threads", headers=headers)
    assert answer.status == 201, answer.body
    return answer


def test_write_then_read_with_token_always_sees_the_write(service, tenants, delayed_replica):
    slug = tenants["a"].slug
    served = Counter()
    for _ in range(500):
        written = create_thread(service, slug)
        token = written.headers[causal.HEADER]
        read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{written.body['id']}",
                   headers={causal.HEADER: token})
        assert read.status == 200, read.body
        assert read.body["thread"]["id"] == written.body["id"]
        served[read.body["served_by"]] += 1
    # The replica applies WAL 2 s late, so every read here needed the primary.
    assert served == {"shard_0": 500}


def test_the_causal_cookie_works_like_the_header(service, tenants, delayed_replica) -> None:
    slug = tenants["a"].slug
    written = create_thread(service, slug)
    cookie = written.headers["Set-Cookie"].split(";")[0]
    assert cookie.startswith(f"{causal.COOKIE}=")
    read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{written.body['id']}",
               headers={"Cookie": cookie})
    assert read.status == 200 and read.body["served_by"] == "shard_0"


def test_without_tokens_most_reads_go_to_replicas(service, tenants) -> None:
    slug = tenants["b"].slug
    ids = [create_thread(service, slug).body["id"] for _ in range(20)]
    wait_until(lambda: get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[-1]}").status == 200,
               timeout=10, what="the replica to catch up")
    served = Counter()
    for i in range(300):
        read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[i % len(ids)]}")
        assert read.status == 200
        served[read.body["served_by"]] += 1
    assert served["shard_1_replica_1"] >= 0.9 * 300, served


@pytest.mark.parametrize("token", [
    "garbage",
    "eyJzaGFyZF8wIjoiZmZmZiJ9:1tXyZ:forged-signature",
    causal.encode({"shard_0": 5})[:-3] + "abc",
    signing.dumps({"shard_0": "not-hex"}, salt="shardsvc.causal"),  # signed, wrong shape
    signing.dumps(["shard_0"], salt="shardsvc.causal"),
])
def test_a_malformed_or_forged_token_reads_from_the_primary(service, tenants, token) -> None:
    slug = tenants["a"].slug
    thread_id = create_thread(service, slug).body["id"]
    read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{thread_id}",
               headers={causal.HEADER: token, "Cookie": f"{causal.COOKIE}={token}"})
    assert read.status == 200
    assert read.body["served_by"] == "shard_0"
    assert read.body["reason"] == "bad_token"


def test_reads_survive_a_replica_stopped_mid_run(service, tenants, topology) -> None:
    slug = tenants["b"].slug
    ids = [create_thread(service, slug).body["id"] for _ in range(10)]
    wait_until(lambda: get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[-1]}").status == 200,
               timeout=10, what="the replica to catch up")
    failures: list[object] = []
    served: Counter[str] = Counter()
    stop = threading.Event()

    def reader() -> None:
        i = 0
        while not stop.is_set():
            read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[i % len(ids)]}")
            if read.status != 200:
                failures.append((read.status, read.body))
            else:
                served[read.body["served_by"]] += 1
            i += 1

    with ThreadPoolExecutor(max_workers=8) as pool:
        for _ in range(8):
            pool.submit(reader)
        try:
            # Readers are being served by the replica when it stops ...
            wait_until(lambda: served["shard_1_replica_1"] >= 16, timeout=30,
                       what="reads served by the replica before it stops")
            topology.stop_node("shard_1_replica_1", mode="immediate")
            try:
                # ... and keep being served, by the primary, while it is down.
                on_primary = served["shard_1"]
                wait_until(lambda: served["shard_1"] >= on_primary + 40, timeout=30,
                           what="reads served by the primary while the replica is down")
                during = served.copy()
            finally:
                topology.start_node("shard_1_replica_1")
            # Reads go on while it comes back, until it serves them again.
            on_replica = served["shard_1_replica_1"]
            wait_until(lambda: served["shard_1_replica_1"] > on_replica, timeout=30,
                       what="reads to return to the replica under load")
        finally:
            stop.set()  # the readers end; a failed wait still reports
    assert failures == []
    assert during["shard_1"] > 0  # the primary took over
    # Back on the replica once it is healthy again.
    def replica_serves() -> bool:
        read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[0]}")
        return read.status == 200 and read.body["served_by"] == "shard_1_replica_1"

    wait_until(replica_serves, timeout=30, what="reads to return to the replica")


# README: "A placement changed through Django reaches every worker within DIRECTORY_LOCAL_TTL;
# one changed with raw SQL within that plus DIRECTORY_REDIS_TTL" (1 s and 30 s). The bounds are
# asserted at their documented values, not at the configured ones, so a default raised by mistake
# fails here; the tolerance covers scheduling on a loaded machine only.
DOCUMENTED_LOCAL_TTL = 1.0
DOCUMENTED_REDIS_TTL = 30
SCHEDULING_TOLERANCE = 0.5

Placement = tuple[str, int]  # (shard, directory version) as a worker routes


def ask_workers(url: str, *, requests: int = 64) -> list[tuple[float, int, Placement]]:
    """(time sent, worker pid, placement) of `requests` concurrent asks, 16 at a time."""
    def ask(_: int) -> tuple[float, int, Placement]:
        sent = time.monotonic()
        body = get(url).body
        return sent, body["pid"], (body["shard"], body["version"])

    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(ask, range(requests)))


def wait_for_every_worker(url: str, new: Placement, changed_at: float, *, bound: float,
                          requests: int = 64, interval: float = 0.0) -> float:
    """Ask until one round finds both workers on `new`; returns how long after `changed_at` the
    latest request was sent that a worker still answered with another placement (it was stale
    at least until then)."""
    stale_for = 0.0

    def everyone_moved() -> bool:
        nonlocal stale_for
        answers = ask_workers(url, requests=requests)
        for sent, _, placement in answers:
            if placement != new:
                stale_for = max(stale_for, sent - changed_at)
        return len({pid for _, pid, _ in answers}) == 2 and {p for *_, p in answers} == {new}

    wait_until(everyone_moved, timeout=bound + 10, interval=interval,
               what="every worker to see the new placement")
    return stale_for


def test_directory_change_reaches_every_worker(service, tenants) -> None:
    from shards.models import Tenant
    from shards.runtime import conf

    assert conf().directory_local_ttl == DOCUMENTED_LOCAL_TTL, "README and settings disagree"
    slug = tenants["c"].slug
    url = f"{service.url}/api/sites/{slug}/_diag/where"
    before = ask_workers(url)  # every worker has just cached the old placement
    assert len({pid for _, pid, _ in before}) == 2, "expected answers from both workers"
    assert {shard for *_, (shard, _) in before} == {"shard_0"}
    row = Tenant.objects.using("default").get(slug=slug)
    row.shard = "shard_1"  # moved by hand, as in the admin
    row.save()
    changed_at = time.monotonic()
    try:
        stale_for = wait_for_every_worker(url, ("shard_1", row.version), changed_at,
                                          bound=DOCUMENTED_LOCAL_TTL)
        print(f"last stale answer to a request sent {stale_for:.2f} s after the change")
        assert stale_for <= DOCUMENTED_LOCAL_TTL + SCHEDULING_TOLERANCE, (
            f"a worker still served the old placement to a request sent {stale_for:.2f} s "
            f"after the change; documented: within {DOCUMENTED_LOCAL_TTL} s")
    finally:
        row.shard = "shard_0"
        row.save()


def test_a_placement_changed_with_raw_sql_reaches_every_worker(service, tenants,
                                                               topology: LocalTopology) -> None:
    from shards.models import Tenant
    from shards.runtime import conf

    assert conf().directory_redis_ttl == DOCUMENTED_REDIS_TTL, "README and settings disagree"
    bound = DOCUMENTED_LOCAL_TTL + DOCUMENTED_REDIS_TTL
    entry = tenants["c"]
    url = f"{service.url}/api/sites/{entry.slug}/_diag/where"
    # A change through Django first: Redis then holds an entry for a full DIRECTORY_REDIS_TTL,
    # the longest any worker can go on reading it after the raw change below.
    row = Tenant.objects.using("default").get(id=entry.id)
    row.shard = "shard_1"
    row.save()
    try:
        wait_for_every_worker(url, ("shard_1", row.version), time.monotonic(),
                              bound=DOCUMENTED_LOCAL_TTL)
        with topology.admin_connect(topology.node("default")) as conn:
            version = conn.execute(
                "UPDATE shards_tenant SET shard = 'shard_0', version = version + 1 "
                "WHERE id = %s RETURNING version", [entry.id]).fetchone()[0]
        changed_at = time.monotonic()
        stale_for = wait_for_every_worker(url, ("shard_0", version), changed_at, bound=bound,
                                          requests=32, interval=0.1)
        print(f"raw SQL change: last stale answer to a request sent {stale_for:.2f} s after it")
        assert stale_for <= bound + SCHEDULING_TOLERANCE, (
            f"a worker still served the old placement to a request sent {stale_for:.2f} s "
            f"after the change; documented: within {bound} s")
    finally:
        row = Tenant.objects.using("default").get(id=entry.id)
        row.shard = "shard_0"
        row.save()  # published to Redis and the caches: no stale entry outlives the test


# Long enough that no worker's cached entry can expire while the test runs.
LONG_LOCAL_TTL = 120.0


@pytest.fixture
def long_cache_service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="long-cache", port=topology.layout.http_port + 4, SHARDSVC_URLCONF="tests.urls",
        SHARDSVC_DIRECTORY_LOCAL_TTL=str(LONG_LOCAL_TTL),
    )
    try:
        yield svc
    finally:
        svc.stop()


def test_a_token_from_after_a_move_makes_a_stale_worker_reload(
    long_cache_service: ServiceProcess, tenants,
) -> None:
    from shards.models import Tenant

    entry = tenants["c"]
    url = f"{long_cache_service.url}/api/sites/{entry.slug}/_diag/where"

    def views(headers: dict[str, str] | None = None) -> dict[int, set[tuple[str, int]]]:
        seen: dict[int, set[tuple[str, int]]] = {}
        with ThreadPoolExecutor(max_workers=16) as pool:
            for answer in pool.map(lambda _: get(url, headers=headers), range(64)):
                seen.setdefault(answer.body["pid"], set()).add(
                    (answer.body["shard"], answer.body["version"]))
        return seen

    cached_from = time.monotonic()
    before = views()  # every worker caches the current placement
    assert len(before) == 2, "expected answers from both workers"
    (old,) = set.union(*before.values())
    row = Tenant.objects.using("default").get(id=entry.id)
    old_shard = row.shard
    row.shard = "shard_1" if old_shard == "shard_0" else "shard_0"
    row.save()
    new = (row.shard, row.version)
    try:
        # Without the token the workers still route by their cached, old placement...
        stale = views()
        assert set(stale) <= set(before) and set.union(*stale.values()) == {old}
        # ...and with a token from after the move every worker answers with the new one.
        token = causal.encode({}, {entry.id: row.version})
        assert views(headers={causal.HEADER: token}) == {pid: {new} for pid in before}
        # All of it within the cache's TTL: the reload came from the token, not from expiry.
        assert time.monotonic() - cached_from < LONG_LOCAL_TTL
    finally:
        row.shard = old_shard
        row.save()
