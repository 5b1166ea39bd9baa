"""Single-flight directory lookups through the real service (gunicorn, two gevent workers): when
a tenant's entry has expired in a worker and Redis has lost it too, the requests in flight for
that tenant cause one control-database read per worker, not one each."""

from __future__ import annotations

import socket
import time
import uuid
from collections.abc import Iterator

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from tests.client import wait_until
from tests.test_metrics import scrape

pytestmark = pytest.mark.usefixtures("django_db")

WORKERS = 2
CONCURRENT = 48
LOCAL_TTL = 0.3


@pytest.fixture(scope="module")
def short_ttl(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="single-flight", port=topology.layout.http_port + 7, SHARDSVC_URLCONF="tests.urls",
        SHARDSVC_WORKERS=str(WORKERS), SHARDSVC_DIRECTORY_LOCAL_TTL=str(LOCAL_TTL),
    )
    yield svc
    svc.stop()


def control_queries(service: ServiceProcess) -> float:
    return scrape(service).value("shardsvc_db_query_seconds_count", cluster="default")


def burst(service: ServiceProcess, path: str, count: int) -> list[bytes]:
    """`count` requests for `path` arriving together: the connections are opened (and accepted
    by the workers) first, then every request is sent before any answer is read."""
    conns = [socket.create_connection(("127.0.0.1", service.port), timeout=30)
             for _ in range(count)]
    try:
        time.sleep(0.2)  # let the workers accept them all
        raw = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").encode()
        for conn in conns:
            conn.sendall(raw)
        answers = []
        for conn in conns:
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
            answers.append(b"".join(chunks))
        return answers
    finally:
        for conn in conns:
            conn.close()


def test_requests_at_expiry_cause_one_control_read_per_worker(short_ttl: ServiceProcess) -> None:
    from shards import redisguard
    from shards.directory import _redis_key, create_tenant
    from shards.models import Tenant

    entry = create_tenant(f"flight-{uuid.uuid4().hex[:8]}", shard="shard_0")
    # The fill reads the control replica: once it has the row, one fill is one query.
    wait_until(lambda: Tenant.objects.using("default_replica_1").filter(id=entry.id).exists(),
               timeout=10, what="the control replica to have the new tenant")
    path = f"/api/sites/{entry.slug}/_diag/where"
    # Warm both workers' caches, then let the entries expire everywhere: in each worker and,
    # as when Redis restarted or evicted it, in Redis.
    burst(short_ttl, path, 8)
    time.sleep(LOCAL_TTL * 2)
    redisguard.client().delete(_redis_key(("slug", entry.slug)), _redis_key(("id", entry.id)))

    before = control_queries(short_ttl)
    answers = burst(short_ttl, path, CONCURRENT)
    reads = control_queries(short_ttl) - before

    assert all(a.startswith(b"HTTP/1.1 200") for a in answers), {a[:40] for a in answers}
    assert all(entry.slug.encode() in a for a in answers)
    # At least one fill read the database (so the test measured something), at most one per
    # worker: the other requests waited for it.
    assert 1 <= reads <= WORKERS, reads
