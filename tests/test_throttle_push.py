"""Blocked addresses pushed to the workers (sites.blocked), through the real service and
against the topology's Redis: no counter read while a worker's view is live, a block known to
every worker before its answer leaves, a lost subscription distrusted until it is back."""

from __future__ import annotations

import http.client
import threading
import time
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

from deploy.topology import ServiceProcess
from tests.api_client import create_site
from tests.client import wait_until
from tests.throttle_client import (
    AUTH_LIMIT,
    CounterReads,
    assert_throttled,
    call,
    well_formed_key,
)


def warm_up_every_worker(service: ServiceProcess, source: str, path: str,
                         headers: dict[str, str], connections: int = 8) -> None:
    """A few requests on each of `connections` keep-alive connections opened at once, which the
    workers share (deploy/accept_balance.py): every worker then knows the key and has its
    subscription confirmed and read (its second check at the latest)."""
    parts = urllib.parse.urlsplit(service.url)
    start = threading.Barrier(connections)

    def ask(_: int) -> list[int]:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30,
                                          source_address=(source, 0))
        try:
            start.wait()
            statuses = []
            for _ in range(3):
                conn.request("GET", urllib.parse.urlsplit(path).path, headers=headers)
                answer = conn.getresponse()
                answer.read()
                statuses.append(answer.status)
            return statuses
        finally:
            conn.close()

    with ThreadPoolExecutor(max_workers=connections) as pool:
        assert all(s == [200, 200, 200] for s in pool.map(ask, range(connections)))


def test_known_keys_read_no_counter_and_a_block_reaches_every_worker_at_once(
        throttled, topology) -> None:
    """Blocked addresses are pushed to the workers (sites.blocked): a request whose address is
    not blocked reads no counter from Redis, and the failure that blocks an address is known to
    every worker before its answer reaches the client."""
    site = create_site(throttled, topology, prefix="thr-push")
    me, other = "127.0.0.33", "127.0.0.34"
    headers = {"X-Api-Key": site.key}
    thread = f"{site.root}/threads/{site.thread()}"
    wait_until(lambda: call(other, "GET", thread, headers=headers).status == 200, timeout=10,
               what="the new thread on the replica")
    warm_up_every_worker(throttled, me, thread, headers)

    with CounterReads(topology) as reads:
        for _ in range(20):
            assert call(me, "GET", thread, headers=headers).status == 200
    assert reads.seen == []

    with CounterReads(topology) as reads:
        for _ in range(AUTH_LIMIT):
            assert call(me, "GET", thread, headers={"X-Api-Key": well_formed_key()}).status == 401
        # Each refused at once, on whichever worker takes the connection: no counter read.
        for _ in range(8):
            assert_throttled(call(me, "GET", thread, headers=headers))
        assert call(other, "GET", thread, headers=headers).status == 200
    assert reads.seen, "the failed checks were counted"
    assert not [c for c in reads.seen if c.split()[0].upper() in ("GET", "MGET")], reads.seen


def test_the_pushed_view_is_trusted_only_while_its_subscription_is_live(topology) -> None:
    """sites.blocked against the topology's Redis: not trusted before its subscription is
    confirmed and read, an announcement seen by the very next check, a lost subscription
    distrusted until it is back, and what was announced meanwhile found then."""
    from shards import redisguard
    from sites.blocked import BlockedAddresses, announce

    key = f"test-blocked-{uuid.uuid4().hex[:8]}"
    client = redisguard.client()
    view = BlockedAddresses(redisguard.client, key)
    try:
        # None (ask the counter) until the subscription is confirmed and its set read.
        wait_until(lambda: view.check("10.0.0.1") == 0.0, timeout=5,
                   what="the subscription confirmed and its set read")
        until = int(time.time()) + 60
        announce(client, key, "10.0.0.1", until, 120)
        assert view.check("10.0.0.1") == until  # the next check, no waiting
        assert view.check("10.0.0.2") == 0.0

        killed = client.client_kill_filter(_type="pubsub")
        assert killed >= 1
        announce(client, key, "10.0.0.2", until, 120)  # while the view is away

        def distrusted() -> bool:
            return view.check("10.0.0.2") is None

        wait_until(distrusted, timeout=5, what="the lost subscription distrusted")
        wait_until(lambda: view.check("10.0.0.2") == until, timeout=10,
                   what="the view back, with what was announced while it was away")
        assert view.check("10.0.0.1") == until
    finally:
        view.close()
        client.delete(key)
