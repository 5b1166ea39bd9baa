"""Redis is a cache, never a single point of failure.

The real service (Gunicorn, gevent workers) is driven with a steady load of thread-page reads
and comment writes while the topology's Redis is paused (SIGSTOP: how a stuck server or a
dropped network path behaves) and while it is stopped outright. The breaker's logic and the
deferred writes are tested without servers in tests/unit/test_breaker.py.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest

from deploy import processes as proc
from deploy.topology import LocalTopology, ServiceProcess
from shards import redisguard
from tests.api_client import SiteClient, create_site
from tests.client import get, wait_until

# ----- the real service ---------------------------------------------------------------------

READERS = 2
WRITERS = 1
PHASE_SECONDS = 4.0
ROUNDS = 3  # normal and paused phases alternate; more rounds, steadier tails
# Each client pauses this long between requests: a steady load below saturation, so latency
# shows what the outage costs a request, not the queue a CPU-bound 2-core box builds.
THINK_SECONDS = 0.05
# The bound the hardening issue set for this test: p99 paused at most 100 ms above normal. The
# phases alternate so the machine's other load hits both; the one-wait assertion below is what
# holds whatever that load is.
P99_ALLOWANCE = 0.100


@dataclass
class Sample:
    kind: str  # "read" | "write"
    status: int
    seconds: float
    cache: str


@pytest.fixture(scope="module")
def site(service: ServiceProcess, topology: LocalTopology) -> SiteClient:
    return create_site(service, topology, prefix="redis").as_user("rita", "Rita")


@pytest.fixture(scope="module")
def threads(site: SiteClient) -> list[int]:
    made = [site.thread() for _ in range(6)]
    for thread in made:
        for i in range(3):
            site.comment(thread, f"seed {i}")
    return made


def metric(service: ServiceProcess, series: str) -> float:
    """One unlabelled (or fully labelled) series from the service's /metrics, 0 if absent."""
    text = get(f"{service.url}/metrics").body
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[1])
    return 0.0


def redis_pid(topology: LocalTopology) -> int:
    pid = proc.read_pid(topology.redis_dir / "redis.pid")
    assert pid is not None, "the topology's Redis is not running"
    return pid


@contextmanager
def redis_paused(topology: LocalTopology) -> Iterator[None]:
    pid = redis_pid(topology)
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(pid, signal.SIGCONT)  # later tests share this Redis


def run_load(site: SiteClient, threads: list[int], seconds: float) -> list[Sample]:
    """READERS clients reading thread pages and WRITERS clients posting comments, each waiting
    THINK_SECONDS after every answer, for `seconds`."""
    samples: list[Sample] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + seconds

    def client(kind: str, index: int) -> None:
        me = SiteClient(site.base, site.slug, site.key, site.shard, site.user_token)
        i = index
        while time.monotonic() < stop_at:
            thread = threads[i % len(threads)]
            i += 1
            started = time.perf_counter()
            if kind == "read":
                answer = me.call("GET", f"/threads/{thread}/comments?limit=20")
            else:
                answer = me.call("POST", f"/threads/{thread}/comments", {"body": f"load {i}"},
                                 user=True)
            elapsed = time.perf_counter() - started
            with lock:
                samples.append(Sample(kind, answer.status, elapsed,
                                      answer.headers.get("X-Cache", "")))
            time.sleep(THINK_SECONDS)

    workers = [threading.Thread(target=client, args=("read", n)) for n in range(READERS)]
    workers += [threading.Thread(target=client, args=("write", n)) for n in range(WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=seconds + 60)
    assert not any(w.is_alive() for w in workers), "a load client hung"
    return samples


def p99(samples: list[Sample]) -> float:
    ordered = sorted(s.seconds for s in samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def describe(samples: list[Sample]) -> str:
    reads = sum(s.kind == "read" for s in samples)
    caches: dict[str, int] = {}
    for s in samples:
        if s.kind == "read":
            caches[s.cache] = caches.get(s.cache, 0) + 1
    p50 = sorted(s.seconds for s in samples)[len(samples) // 2]
    slowest = sorted(samples, key=lambda s: -s.seconds)[:5]
    return (f"{len(samples)} requests ({reads} reads, {len(samples) - reads} writes), "
            f"p50 {p50 * 1000:.1f} ms, p99 {p99(samples) * 1000:.1f} ms, X-Cache {caches}, "
            "slowest " + ", ".join(f"{s.kind} {s.cache} {s.seconds * 1000:.0f} ms"
                                   for s in slowest))


def readyz(service: ServiceProcess) -> dict:
    answer = get(f"{service.url}/readyz/shards", timeout=10)
    assert answer.status == 200, answer.body  # Redis never makes the service unready
    return answer.body


def pages_come_from_redis(site: SiteClient, thread: int) -> bool:
    answer = site.call("GET", f"/threads/{thread}/comments?limit=20")
    return answer.status == 200 and answer.headers.get("X-Cache") in {"hit", "fill", "wait"}


def test_paused_redis_under_load_keeps_reads_and_writes_fast(
        service: ServiceProcess, topology: LocalTopology, site: SiteClient,
        threads: list[int]) -> None:
    run_load(site, threads, 1.0)  # warm up: the first requests of a worker open its pools
    # Normal and paused phases alternate, so a change in the machine's other load hits both.
    normal: list[Sample] = []
    paused: list[Sample] = []
    watched = threads[0]
    during_pause: dict = {}
    waits_while_paused = 0.0  # Redis commands that waited out their timeout (or failed)
    for last_round in [False] * (ROUNDS - 1) + [True]:
        wait_until(lambda: pages_come_from_redis(site, watched), timeout=10,
                   what="pages from Redis before a normal phase")
        normal += run_load(site, threads, PHASE_SECONDS)
        if last_round:
            # A page cached in Redis before the pause; a comment written during it must show
            # on that page once Redis is back (the replayed write raises the page's mark).
            wait_until(lambda: site.call("GET", f"/threads/{watched}/comments?limit=20")
                       .headers.get("X-Cache") == "hit", timeout=10, what="a cached page")
        with redis_paused(topology):
            waits_before = metric(service, "shardsvc_redis_errors_total")
            paused += run_load(site, threads, PHASE_SECONDS)
            waits_while_paused += metric(service, "shardsvc_redis_errors_total") - waits_before
            if last_round:
                during_pause = site.comment(watched, "written while Redis was paused")
                ready = readyz(service)
                assert ready["status"] == "degraded" and ready["redis"]["status"] == "down", ready
        resumed_at = time.monotonic()

    print(f"\nnormal: {describe(normal)}\npaused: {describe(paused)}")
    assert {s.status for s in normal} <= {200, 201}, describe(normal)
    assert any(s.cache == "hit" for s in normal), describe(normal)
    # While paused, the answers carried on, served from the database, writes included.
    assert {s.status for s in paused} <= {200, 201}, describe(paused)
    assert sum(s.kind == "write" and s.status == 201 for s in paused) > 0, describe(paused)
    assert any(s.cache == "bypass" for s in paused), describe(paused)
    # What keeps a paused Redis cheap, whatever the machine's load does to the latencies
    # printed above: a request waits out Redis's timeout at most once (then skips Redis for its
    # rest), and an open breaker spares later requests even that one wait. Without the rule a
    # page's several Redis commands would each wait (counted here as errors).
    assert 0 < waits_while_paused <= len(paused), (waits_while_paused, len(paused))
    assert p99(paused) <= p99(normal) + P99_ALLOWANCE, (
        f"p99 {p99(paused) * 1000:.1f} ms paused vs {p99(normal) * 1000:.1f} ms normal")

    # Redis is used again within seconds: pages come from it, and they carry the comment
    # written while it was paused.
    def cached_page_with_the_paused_write() -> bool:
        answer = site.call("GET", f"/threads/{watched}/comments?limit=20")
        ids = [c["id"] for c in answer.body["items"]]
        return answer.headers.get("X-Cache") in {"hit", "fill"} and during_pause["id"] in ids

    wait_until(cached_page_with_the_paused_write, timeout=10, interval=0.05,
               what="a page from Redis with the comment written during the pause")
    back_after = time.monotonic() - resumed_at
    assert back_after < 5.0, back_after
    wait_until(lambda: readyz(service)["redis"]["status"] == "up", timeout=10,
               what="/readyz to see Redis up")


def test_paused_redis_shows_in_metrics(service: ServiceProcess, topology: LocalTopology,
                                       site: SiteClient, threads: list[int]) -> None:
    up = 'shardsvc_redis_up{cache="default"}'
    breaker_open = 'shardsvc_redis_breaker_open{cache="default"}'
    errors_before = metric(service, "shardsvc_redis_errors_total")
    with redis_paused(topology):
        for thread in threads * 3:
            assert site.call("GET", f"/threads/{thread}/comments").status == 200
        wait_until(lambda: metric(service, up) == 0 and metric(service, breaker_open) >= 1,
                   timeout=10,
                   what="shardsvc_redis_up 0 and a breaker open")
        assert metric(service, "shardsvc_redis_errors_total") > errors_before
        assert metric(service, "shardsvc_redis_short_circuits_total") > 0

    seen: list[tuple[float, float, str]] = []

    def recovered() -> bool:
        page = site.call("GET", f"/threads/{threads[1]}/comments")
        seen.append((metric(service, up), metric(service, breaker_open),
                     page.headers.get("X-Cache", "")))
        return seen[-1][:2] == (1.0, 0.0) and seen[-1][2] in {"hit", "fill"}

    try:
        wait_until(recovered, timeout=10, what="breakers closed and Redis up again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last (up, breaker_open, X-Cache): {seen[-3:]}") from None


def test_stopped_redis_degrades_and_a_restarted_one_is_used_again(
        service: ServiceProcess, topology: LocalTopology, site: SiteClient,
        threads: list[int]) -> None:
    assert proc.stop_pid(topology.redis_dir / "redis.pid")
    try:
        for thread in threads:
            page = site.call("GET", f"/threads/{thread}/comments")
            assert page.status == 200 and page.headers["X-Cache"] == "bypass", page
        written = site.comment(threads[0], "written while Redis was down")
        assert written["id"]
        ready = readyz(service)
        assert ready["status"] == "degraded" and ready["redis"]["status"] == "down", ready
        assert ready["redis"]["reachable"] is False
    finally:
        topology._ensure_redis()
    wait_until(lambda: site.call("GET", f"/threads/{threads[0]}/comments").headers.get("X-Cache")
               in {"hit", "fill"}, timeout=10, what="pages from the restarted Redis")
    wait_until(lambda: readyz(service)["status"] == "ok", timeout=10, what="/readyz ok")


def test_a_key_rotated_while_redis_is_paused_is_marked_in_redis_once_it_is_back(
        django_db, service: ServiceProcess, topology: LocalTopology) -> None:
    from django.core.cache import cache

    from sites import keys
    from sites.models import Site, hash_key
    from sites.service import rotate_key

    rotated = create_site(service, topology, prefix="rotate")
    assert rotated.call("GET", "/threads/counts?ids=1").status == 200
    old_key = keys._cache_key(hash_key(rotated.key))
    site_row = Site.objects.using("default").get(tenant__slug=rotated.slug)
    owner = (site_row.tenant_id, site_row.key_generation)

    def cached_in_redis() -> bool:
        # A lookup leaves the key in Redis. Not the service's own: a worker whose breaker was
        # still open from an earlier test may replay its deferred drop of the new site's key
        # (harmless, a later lookup reads the row) just after its lookup filled it.
        keys._local.get().discard(hash_key(rotated.key))
        assert keys.owner_of_key(rotated.key) == owner
        return bool(cache.get(old_key) == owner)

    wait_until(cached_in_redis, timeout=10, interval=0.1, what="the key to be cached in Redis")

    with redis_paused(topology):
        rotate_key(site_row)  # its "no site's key" mark for the old key fails and is kept
        assert redisguard.deferred().pending >= 1
    # The next command that reaches Redis replays the mark (in the background).
    wait_until(lambda: cache.get(old_key) == keys._NO_SITE
               and redisguard.deferred().pending == 0,
               timeout=10, interval=0.05, what="the rotated key to be marked in Redis")
