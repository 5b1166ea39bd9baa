"""Prometheus metrics and structured logs through the real service (gunicorn, two gevent workers,
PgBouncer, replicas): counts add up across workers in one scrape, queries are counted per shard
and role, reads per routing reason; access log lines carry request id, site and shard."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client.parser import text_string_to_metric_families

from deploy.topology import LocalTopology, ServiceProcess
from tests.client import get, get_many, post, wait_until

pytestmark = pytest.mark.usefixtures("django_db")

WHERE_ROUTE = "api/sites/<str:tenant>/_diag/where"


class Scrape:
    def __init__(self, text: str) -> None:
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples of `name` whose labels include `labels`."""
        return sum(
            value for sample_name, sample_labels, value in self.samples
            if sample_name == name and labels.items() <= sample_labels.items()
        )

    def labelsets(self, name: str) -> list[dict[str, str]]:
        return [labels for sample_name, labels, _ in self.samples if sample_name == name]


def scrape(service: ServiceProcess) -> Scrape:
    answer = get(f"{service.url}/metrics")
    assert answer.status == 200, answer.body
    assert answer.headers["Content-Type"].startswith("text/plain")
    return Scrape(answer.body)


def test_request_counts_add_up_across_workers_in_one_scrape(service, tenants) -> None:
    slug = tenants["a"].slug
    before = scrape(service)
    pids: set[int] = set()
    sent = 0
    for _ in range(30):  # concurrent bursts until both workers have answered
        answers = get_many([f"{service.url}/api/sites/{slug}/_diag/where"] * 20)
        assert {a.status for a in answers} == {200}
        pids |= {a.body["pid"] for a in answers}
        sent += len(answers)
        if len(pids) >= 2:
            break
    assert len(pids) == 2, f"only worker(s) {pids} answered"

    labels = {"route": WHERE_ROUTE, "method": "GET", "status": "200"}
    # Whichever worker answers the scrape, it reports the sum over both workers.
    for after in (scrape(service) for _ in range(6)):
        assert (after.value("shardsvc_requests_total", **labels)
                - before.value("shardsvc_requests_total", **labels)) == sent
        hist = {"route": WHERE_ROUTE, "method": "GET"}
        assert (after.value("shardsvc_request_seconds_count", **hist)
                - before.value("shardsvc_request_seconds_count", **hist)) == sent
        # Routes are URL patterns: no raw path (with the slug in it) ever becomes a label.
        assert not any(slug in str(ls) for ls in after.labelsets("shardsvc_requests_total"))


def test_queries_are_counted_per_shard_and_role_and_reads_per_reason(service, tenants) -> None:
    slug = tenants["a"].slug  # on shard_0
    before = scrape(service)
    ids = []
    for _ in range(5):
        created = post(f"{service.url}/api/sites/{slug}/_diag/threads")
        assert created.status == 201, created.body
        ids.append(created.body["id"])

    def replica_has_them() -> bool:
        read = get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[-1]}")
        return read.status == 200 and read.body["served_by"] == "shard_0_replica_1"

    wait_until(replica_has_them, timeout=10, what="the replica to serve the new threads")
    reads = get_many([f"{service.url}/api/sites/{slug}/_diag/threads/{i}" for i in ids * 4])
    assert {r.status for r in reads} == {200}, [r.body for r in reads if r.status != 200]
    bad = get(f"{service.url}/api/sites/{slug}/_diag/threads/{ids[0]}",
              headers={"X-Causal-Token": "garbage"})
    assert bad.status == 200 and bad.body["reason"] == "bad_token"
    after = scrape(service)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("shardsvc_db_queries_total", cluster="shard_0", role="primary") >= 5
    assert delta("shardsvc_db_queries_total", cluster="shard_0", role="replica") >= 1
    assert delta("shardsvc_db_query_seconds_count", cluster="shard_0", role="replica") >= 1
    # Nothing of tenant a ran on shard_1.
    assert delta("shardsvc_db_queries_total", cluster="shard_1") == 0
    served_by_replica = sum(r.body["served_by"] == "shard_0_replica_1" for r in reads)
    assert delta("shardsvc_read_routing_total", cluster="shard_0", target="replica",
                 reason="replica") >= served_by_replica > 0
    assert delta("shardsvc_read_routing_total", cluster="shard_0", target="primary",
                 reason="bad_token") >= 1


def test_gauges_come_from_every_worker_and_metrics_is_not_counted(service, tenants) -> None:
    slug = tenants["b"].slug  # on shard_1
    thread_id = post(f"{service.url}/api/sites/{slug}/_diag/threads").body["id"]
    pids: set[int] = set()
    for _ in range(30):  # primary reads (a bad token) until both workers have a shard_1 pool
        url = f"{service.url}/api/sites/{slug}/_diag/threads/{thread_id}"
        with ThreadPoolExecutor(max_workers=20) as pool:
            answers = list(pool.map(
                lambda u: get(u, headers={"X-Causal-Token": "garbage"}), [url] * 20))
        pids |= {a.body["pid"] for a in answers if a.status == 200}
        if len(pids) >= 2:
            break
    assert len(pids) == 2

    def gauges_ready() -> Scrape | None:
        s = scrape(service)
        # livesum: both workers' caps (a primary's: SHARDSVC_POOL_MAX_CONNS_PRIMARY, 16 by
        # default) add up. Each worker samples its gauges every second.
        if s.value("shardsvc_pool_max_connections", alias="shard_1") != 32:
            return None
        return s if len(s.labelsets("shardsvc_replica_lag_seconds")) == 3 else None

    s = wait_until(gauges_ready, timeout=10, what="gauges of both workers")
    for alias in ("default_replica_1", "shard_0_replica_1", "shard_1_replica_1"):
        assert 0 <= s.value("shardsvc_replica_lag_seconds", alias=alias) < 5
        assert s.value("shardsvc_replica_healthy", alias=alias) == 1
    states = {ls["state"] for ls in s.labelsets("shardsvc_pool_connections")}
    assert states == {"in_use", "idle", "waiting"}
    assert {"default", "shard_0", "shard_1"} <= {
        ls["alias"] for ls in s.labelsets("shardsvc_pool_connections")}
    assert not [ls for ls in s.labelsets("shardsvc_requests_total") if "metrics" in ls["route"]]


def test_unknown_tenants_and_unmatched_paths_get_bounded_routes(service) -> None:
    get(f"{service.url}/api/sites/no-such-tenant-{uuid.uuid4().hex[:6]}/_diag/where")
    get(f"{service.url}/nowhere/{uuid.uuid4().hex}")
    s = scrape(service)
    assert s.value("shardsvc_requests_total", route=WHERE_ROUTE, status="404") >= 1
    assert s.value("shardsvc_requests_total", route="<unmatched>", status="404") >= 1


@pytest.fixture(scope="module")
def tight_pool(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(
        name="metrics-pool", port=topology.layout.http_port + 6, SHARDSVC_WORKERS="1",
        SHARDSVC_URLCONF="tests.urls", SHARDSVC_POOL_MAX_CONNS="1", SHARDSVC_POOL_TIMEOUT="0.5",
    )
    yield svc
    svc.stop()


def test_pool_timeouts_are_counted(tight_pool: ServiceProcess) -> None:
    answers = get_many([f"{tight_pool.url}/_diag/sleep?alias=shard_1&seconds=1.5"] * 3)
    refused = sum(a.status == 503 for a in answers)
    assert refused >= 1, [a.status for a in answers]
    s = scrape(tight_pool)
    assert s.value("shardsvc_pool_timeouts_total", alias="shard_1") == refused
    assert s.value("shardsvc_requests_total", route="_diag/sleep", status="503") == refused


def test_record_cache_counts_hits_and_misses() -> None:
    from prometheus_client import REGISTRY

    from comments.metrics import record_cache

    def value(result: str) -> float:
        return REGISTRY.get_sample_value(
            "shardsvc_cache_total", {"cache": "test_cache", "result": result}) or 0.0

    hits, misses = value("hit"), value("miss")
    record_cache("test_cache", True)
    record_cache("test_cache", True)
    record_cache("test_cache", False)
    assert (value("hit") - hits, value("miss") - misses) == (2, 1)


# ----- request ids and structured logs ------------------------------------------------------


def test_request_ids_are_echoed_or_made(service) -> None:
    given = f"test-{uuid.uuid4()}"
    assert get(f"{service.url}/healthz",
               headers={"X-Request-Id": given}).headers["X-Request-Id"] == given
    made = get(f"{service.url}/healthz", headers={"X-Request-Id": "bad id <script>"})
    assert made.headers["X-Request-Id"] != "bad id <script>"
    assert len(made.headers["X-Request-Id"]) == 32


@pytest.fixture(scope="module")
def logs_service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    svc = topology.start_service(name="logs", port=topology.layout.http_port + 5,
                                 SHARDSVC_URLCONF="tests.urls")
    yield svc
    svc.stop()


def json_lines(service: ServiceProcess, request_id: str) -> list[dict]:
    found = []
    for line in service.log.read_text(errors="replace").splitlines():
        if request_id in line and line.startswith("{"):
            found.append(json.loads(line))
    return found


def test_access_log_lines_carry_request_id_site_and_shard(logs_service, tenants) -> None:
    tenant = tenants["b"]
    request_id = f"logs-{uuid.uuid4()}"
    answer = post(f"{logs_service.url}/api/sites/{tenant.slug}/_diag/threads",
                  headers={"X-Request-Id": request_id})
    assert answer.status == 201 and answer.headers["X-Request-Id"] == request_id

    def access_line() -> dict | None:
        lines = [x for x in json_lines(logs_service, request_id)
                 if x["logger"] == "shardsvc.access"]
        return lines[0] if lines else None

    line = wait_until(access_line, timeout=10, what="the access log line")
    assert line["request_id"] == request_id
    assert (line["site"], line["shard"]) == (tenant.slug, "shard_1")
    assert line["status"] == 201 and line["method"] == "POST"
    assert line["route"] == "api/sites/<str:tenant>/_diag/threads"
    assert line["level"] == "INFO" and isinstance(line["duration_ms"], float)
    assert line["timestamp"].endswith("Z")


def test_lines_logged_during_a_request_carry_its_context(logs_service, tenants) -> None:
    tenant = tenants["a"]
    request_id = f"logs-{uuid.uuid4()}"
    # A 404 from the view: Django logs it (django.request), after every middleware returned.
    answer = get(f"{logs_service.url}/api/sites/{tenant.slug}/_diag/threads/1",
                 headers={"X-Request-Id": request_id})
    assert answer.status == 404

    def django_line() -> dict | None:
        lines = [x for x in json_lines(logs_service, request_id)
                 if x["logger"] == "django.request"]
        return lines[0] if lines else None

    line = wait_until(django_line, timeout=10, what="django.request's line")
    assert line["level"] == "WARNING"
    assert (line["site"], line["shard"]) == (tenant.slug, "shard_0")
    # A request without a tenant has no site, and its id is made up and logged.
    plain = get(f"{logs_service.url}/healthz")
    made = plain.headers["X-Request-Id"]
    line = wait_until(lambda: json_lines(logs_service, made), timeout=10, what="healthz line")[0]
    assert line["route"] == "healthz" and "site" not in line
