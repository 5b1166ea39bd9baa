"""Live updates (Server-Sent Events fed by Redis): events reach the open streams of their own
tenant's thread only, and a stream that reconnects with Last-Event-ID gets what it missed."""

from __future__ import annotations

import pytest

from tests.api_client import SiteClient, create_site
from tests.client import wait_until
from tests.live_client import Stream

SUBSCRIBERS_B = 200
SUBSCRIBERS_A = 10
EVENTS_A = 20


@pytest.fixture(scope="module")
def sites(service, topology) -> tuple[SiteClient, SiteClient]:
    # Same shard: nothing but the tenant keeps their events apart.
    a = create_site(service, topology, prefix="live-a", shard="shard_0").as_user("ann", "Ann")
    b = create_site(service, topology, prefix="live-b", shard="shard_0").as_user("bob", "Bob")
    return a, b


def stream(site: SiteClient, thread: str, **headers: str) -> Stream:
    return Stream(f"{site.root}/threads/{thread}/events?", {"X-Api-Key": site.key, **headers})


def test_no_event_of_one_tenant_reaches_another_tenants_subscribers(sites) -> None:
    a, b = sites
    thread_a, thread_b = a.thread(), b.thread()
    streams_b = [stream(b, thread_b).start() for _ in range(SUBSCRIBERS_B)]
    streams_a = [stream(a, thread_a).start() for _ in range(SUBSCRIBERS_A)]
    try:
        for s in streams_a + streams_b:
            assert s.opened.wait(30) and s.status == 200, s.status
        made_a = [a.comment(thread_a, f"a{i}")["id"] for i in range(EVENTS_A)]
        marker = b.comment(thread_b, "b's only comment")["id"]
        # Every subscriber of B gets B's event; every subscriber of A gets all of A's.
        wait_until(lambda: all(len(s.events) >= 1 for s in streams_b)
                   and all(len(s.events) >= EVENTS_A for s in streams_a),
                   timeout=30, what="the events to arrive")
    finally:
        for s in streams_a + streams_b:
            s.close()
    for s in streams_b:
        assert [(e["type"], e["comment"]["id"]) for _, e, _ in s.events] == [("created", marker)]
    for s in streams_a:
        assert [e["comment"]["id"] for _, e, _ in s.events] == made_a
        assert all(e["comment"]["thread_id"] == thread_a for _, e, _ in s.events)


def test_another_sites_thread_is_not_found(sites) -> None:
    a, b = sites
    thread_a = a.thread()
    s = stream(b, thread_a).start()
    assert s.opened.wait(10)
    s.close()
    assert s.status == 404


def test_a_reconnecting_stream_gets_what_it_missed_once(sites) -> None:
    a, _ = sites
    thread = a.thread()
    first = stream(a, thread).start()
    assert first.opened.wait(10)
    seen = a.comment(thread, "seen live")["id"]
    wait_until(lambda: len(first.events) == 1, timeout=10, what="the live event")
    first.close()
    # While the page is away: a comment, an edit of the first one, a vote.
    missed = a.comment(thread, "missed")["id"]
    assert a.call("PATCH", f"/comments/{seen}", {"body": "seen, edited"}, user=True).status == 200
    assert a.call("PUT", f"/comments/{missed}/vote", {"value": 1}, user=True).status == 200
    again = stream(a, thread, **{"Last-Event-ID": first.last_id}).start()
    wait_until(lambda: len(again.events) >= 3, timeout=10, what="the replay")
    after = a.comment(thread, "after")["id"]
    wait_until(lambda: len(again.events) >= 4, timeout=10, what="the live event after")
    again.close()
    assert [(e["type"], e["comment"]["id"]) for _, e, _ in again.events] == [
        ("created", missed), ("edited", seen), ("voted", missed), ("created", after)]
    assert again.events[2][1]["comment"]["score"] == 1


def test_a_malformed_last_event_id_is_refused(sites) -> None:
    a, _ = sites
    s = stream(a, a.thread(), **{"Last-Event-ID": "yesterday"}).start()
    assert s.opened.wait(10)
    s.close()
    assert s.status == 422
