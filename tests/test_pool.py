"""The pooled connection path as production runs it: Gunicorn gevent workers, the project's
pool backend, PgBouncer in transaction mode, real PostgreSQL."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from deploy.topology import LocalTopology, ServiceProcess
from shards import pg
from tests.client import get, get_many
from tests.conftest import SERVER_TIME_ZONE


class ActiveBackendSampler:
    """Polls pg_stat_activity on one server and remembers the most concurrent sleepers seen."""

    def __init__(self, topology: LocalTopology, alias: str) -> None:
        self.conn = topology.admin_connect(topology.node(alias))
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            count = self.conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE state = 'active' AND query LIKE '%%pg_sleep%%' AND pid <> pg_backend_pid()"
            ).fetchone()[0]
            self.peak = max(self.peak, count)
            time.sleep(0.02)

    def __enter__(self) -> ActiveBackendSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.conn.close()


@pytest.fixture(scope="module")
def one_worker(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="one-worker", port=topology.layout.http_port + 1,
        SHARDSVC_WORKERS="1", SHARDSVC_URLCONF="tests.urls", SHARDSVC_POOL_MAX_CONNS="40",
        SHARDSVC_POOL_MAX_CONNS_PRIMARY="40",
    )
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def default_caps(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(name="default-caps", port=topology.layout.http_port + 3,
                                 SHARDSVC_WORKERS="1", SHARDSVC_URLCONF="tests.urls")
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def capped(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="capped", port=topology.layout.http_port + 2,
        SHARDSVC_WORKERS="1", SHARDSVC_URLCONF="tests.urls",
        SHARDSVC_POOL_MAX_CONNS="10", SHARDSVC_POOL_TIMEOUT="1",
    )
    yield svc
    svc.stop()


def test_a_worker_holds_fewer_connections_to_a_primary_than_to_a_replica(
        topology, default_caps) -> None:
    from django.conf import settings

    primary_cap, replica_cap = settings.DB_POOL_MAX_CONNS_PRIMARY, settings.DB_POOL_MAX_CONNS
    # Two requests more than a primary's cap: those wait in the pool's queue and get their turn.
    wanted = primary_cap + 2
    for alias, peak in (("shard_0", primary_cap), ("shard_0_replica_1", wanted)):
        urls = [f"{default_caps.url}/_diag/sleep?alias={alias}&seconds=1"] * wanted
        with ActiveBackendSampler(topology, alias) as sampler:
            answers = get_many(urls)
        assert [a.status for a in answers] == [200] * wanted, alias
        assert sampler.peak == peak, (alias, sampler.peak)
    assert wanted <= replica_cap


def test_one_gevent_worker_overlaps_database_waits(topology, one_worker) -> None:
    urls = [f"{one_worker.url}/_diag/sleep?alias=shard_0&seconds=2"] * 25
    with ActiveBackendSampler(topology, "shard_0") as sampler:
        answers = get_many(urls)
    assert [a.status for a in answers] == [200] * 25
    # A sync worker would show one sleeper at a time; one gevent worker runs them together.
    assert sampler.peak >= 20, sampler.peak
    assert len({a.body["backend_pid"] for a in answers}) >= 20


def test_connection_cap_holds_under_a_cold_burst(topology, capped) -> None:
    urls = [f"{capped.url}/_diag/sleep?alias=shard_1&seconds=3"] * 50
    with ActiveBackendSampler(topology, "shard_1") as sampler:
        answers = get_many(urls)
    statuses = sorted(a.status for a in answers)
    assert sampler.peak == 10, f"expected exactly 10 concurrent backends, saw {sampler.peak}"
    assert statuses.count(200) == 10
    assert statuses.count(503) == 40
    refused = [a for a in answers if a.status == 503]
    for answer in refused:
        assert answer.body["error"] == "database_unavailable"
        assert "pool for 'shard_1' exhausted" in answer.body["message"]
        assert "MAX_CONNS" in answer.body["message"]
        assert answer.headers.get("Retry-After")


def test_pool_serves_again_after_exhaustion(capped) -> None:
    answers = get_many([f"{capped.url}/_diag/sleep?alias=shard_1&seconds=0"] * 10)
    assert [a.status for a in answers] == [200] * 10


def test_pooled_connections_run_in_utc(topology, service, admin) -> None:
    # The servers default to another zone, so UTC can only come from the app's session setup.
    assert admin("shard_0").execute("SHOW TimeZone").fetchone()[0] == SERVER_TIME_ZONE
    aliases = [n.alias for n in topology.layout.nodes()]
    answers = get_many([f"{service.url}/_diag/session?alias={a}" for a in aliases * 8])
    assert {a.status for a in answers} == {200}
    assert {a.body["timezone"] for a in answers} == {"UTC"}
    assert {a.body["user"] for a in answers} == {"app"}


def test_fifty_concurrent_clients_get_no_prepared_statement_errors(service) -> None:
    # Through Django and the pool: the same parameterized query over and over, concurrently.
    urls = [f"{service.url}/_diag/sleep?alias=shard_0&seconds=0"] * 400
    with ThreadPoolExecutor(max_workers=50) as pool:
        answers = list(pool.map(get, urls))
    bad = [a.body for a in answers if a.status != 200]
    assert not bad, bad[:3]


def test_plain_psycopg_through_pgbouncer_has_no_prepared_statement_errors(topology) -> None:
    dsn = f"postgresql://app@127.0.0.1:{topology.layout.pgbouncer_port}/shard_1"
    errors: list[str] = []

    def client(n: int) -> int:
        done = 0
        with pg.connect(dsn) as conn:
            for i in range(30):
                try:
                    row = conn.execute("SELECT %s::int + %s::int", [n, i]).fetchone()
                    assert row == (n + i,)
                    with conn.transaction():
                        conn.execute("SELECT count(*) FROM pg_class WHERE relpages >= %s", [i])
                    done += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
        return done

    with ThreadPoolExecutor(max_workers=50) as pool:
        done = sum(pool.map(client, range(50)))
    assert errors == []
    assert done == 50 * 30


def test_plain_connect_refuses_prepared_statements() -> None:
    with pytest.raises(ValueError, match="PgBouncer"):
        pg.connect("postgresql://nobody@127.0.0.1:1/x", prepare_threshold=5)
