"""Prometheus metrics, correct under several Gunicorn workers.

With ``PROMETHEUS_MULTIPROC_DIR`` set (deploy/topology.py sets one per service folder and empties
it before the service starts), every worker writes its samples to mmaped files there and
``/metrics`` merges the files of all workers: a scrape answered by any worker shows counters
summed over every worker. Without it (tests in-process, ``runserver``) the default registry of
this process is served.

    shardsvc_requests_total{route,method,status}      route = URL pattern, never the raw path
    shardsvc_request_seconds{route,method}            histogram
    shardsvc_db_queries_total{cluster,role}           every query Django runs, by cluster/role
    shardsvc_db_query_seconds{cluster,role}           histogram
    shardsvc_read_routing_total{cluster,target,reason}  where the router sent reads, and why
    shardsvc_cache_total{cache,result}                ``comments.metrics.record_cache``
    shardsvc_pool_connections{alias,state}            in_use / idle / waiting, summed over workers
    shardsvc_pool_max_connections{alias}              the cap, summed over workers
    shardsvc_pool_timeouts_total{alias}               checkouts that gave up (503s)
    shardsvc_replica_lag_seconds{alias}               as the workers' health checkers see it
    shardsvc_replica_healthy{alias}                   1 if reads may go there now
    shardsvc_database_up{alias,role}                  from the latest /readyz/shards check
    shardsvc_redis_up{cache}                          0 if any worker's last Redis command failed
                                                      or its breaker is not closed
    shardsvc_redis_breaker_open{cache}                workers skipping Redis now (breaker open)
    shardsvc_redis_errors_total                       Redis commands that failed (timeouts, errors)
    shardsvc_redis_short_circuits_total               commands refused at once by an open breaker
    shardsvc_redis_deferred_writes{state}             pending / dropped invalidations to replay
    shardsvc_scatter_total{kind,outcome}              cross-shard reads: complete / partial / failed
    shardsvc_scatter_shard_failures_total{shard,reason}  shards that did not answer one (timeout,
                                                      unavailable, error)

Gauges (and the pool timeout counter, which the pool keeps itself: ``pgpool.timeout_counts()``)
are sampled by each worker in the background (``SAMPLE_INTERVAL``) and by the worker that
answers a scrape just before it answers, since in multiprocess mode a scrape reads files and never
runs code in the other workers.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.db import connections
from django.db.backends.signals import connection_created
from django.http import HttpRequest, HttpResponse
from django.urls import Resolver404, resolve
from prometheus_client import (
    Counter,
    Gauge,
    Histogram,
)

from project.pgpool import pool_stats, timeout_counts
from routers.replicas import get_replica_health
from routers.signals import scatter_finished
from routers.state import current_state
from shards import redisguard
from shards.errors import UnknownAlias
from shards.topology import get_shard_map

logger = logging.getLogger("shardsvc.metrics")

SAMPLE_INTERVAL = 1.0
UNMATCHED_ROUTE = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
# Queries through PgBouncer on one box take ~0.1-1 ms; requests a few ms.
_QUERY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

REQUESTS = Counter(
    "shardsvc_requests", "HTTP requests by URL pattern, method and status.",
    ["route", "method", "status"],
)
REQUEST_SECONDS = Histogram(
    "shardsvc_request_seconds", "Time to answer a request, by URL pattern and method.",
    ["route", "method"], buckets=_REQUEST_BUCKETS,
)
DB_QUERIES = Counter(
    "shardsvc_db_queries", "Queries run through Django, by cluster and server role.",
    ["cluster", "role"],
)
DB_QUERY_SECONDS = Histogram(
    "shardsvc_db_query_seconds", "Query time as Django sees it, by cluster and server role.",
    ["cluster", "role"], buckets=_QUERY_BUCKETS,
)
READ_ROUTING = Counter(
    "shardsvc_read_routing",
    "Reads the router placed: cluster, role of the chosen server, and why it was chosen.",
    ["cluster", "target", "reason"],
)
POOL_CONNECTIONS = Gauge(
    "shardsvc_pool_connections",
    "Pooled connections by alias and state (in_use, idle, waiting callers), all workers.",
    ["alias", "state"], multiprocess_mode="livesum",
)
POOL_MAX = Gauge(
    "shardsvc_pool_max_connections", "Connection cap per alias, summed over live workers.",
    ["alias"], multiprocess_mode="livesum",
)
POOL_TIMEOUTS = Counter(
    "shardsvc_pool_timeouts", "Checkouts that waited POOL_TIMEOUT and gave up.", ["alias"],
)
REPLICA_LAG = Gauge(
    "shardsvc_replica_lag_seconds",
    "Replica replay lag from the latest health check (+Inf when unreachable).",
    ["alias"], multiprocess_mode="livemostrecent",
)
REPLICA_HEALTHY = Gauge(
    "shardsvc_replica_healthy",
    "1 if the replica may serve reads now (reachable, in recovery, within the lag bound).",
    ["alias"], multiprocess_mode="livemostrecent",
)
# Labelled by cache alias, so no process that never samples (the Gunicorn master, which imports
# this module with preload_app) holds a 0 that livemin would report forever.
DATABASE_UP = Gauge(
    "shardsvc_database_up",
    "1 if the database answered the latest /readyz/shards check (primary: and is writable).",
    ["alias", "role"], multiprocess_mode="livemostrecent",
)
REDIS_UP = Gauge(
    "shardsvc_redis_up",
    "1 if the worker's breaker is closed and its last Redis command succeeded (min over workers).",
    ["cache"], multiprocess_mode="livemin",
)
REDIS_BREAKER_OPEN = Gauge(
    "shardsvc_redis_breaker_open",
    "Workers whose Redis breaker is open or probing (Redis skipped), summed.",
    ["cache"], multiprocess_mode="livesum",
)
REDIS_ERRORS = Counter(
    "shardsvc_redis_errors", "Redis commands that failed: timeouts and connection errors.",
)
REDIS_SHORT_CIRCUITS = Counter(
    "shardsvc_redis_short_circuits",
    "Redis commands refused without I/O because the worker's breaker was open.",
)
REDIS_DEFERRED = Gauge(
    "shardsvc_redis_deferred_writes",
    "Invalidations Redis could not take: pending replay, or dropped past the bound (summed).",
    ["state"], multiprocess_mode="livesum",
)
SCATTER = Counter(
    "shardsvc_scatter", "Cross-shard reads (shards/scatter.py) by kind and outcome: complete, "
    "partial (answered without some shards) or failed (partial answers refused).",
    ["kind", "outcome"],
)
SCATTER_SHARD_FAILURES = Counter(
    "shardsvc_scatter_shard_failures", "Shards that did not answer a cross-shard read, by reason.",
    ["shard", "reason"],
)


def _on_scatter(sender: Any, *, kind: str, outcome: str, failures: list[Any],
                **kwargs: Any) -> None:
    SCATTER.labels(kind, outcome).inc()
    for failure in failures:
        SCATTER_SHARD_FAILURES.labels(failure.shard, failure.reason).inc()


# ----- queries ------------------------------------------------------------------------------


@functools.cache
def _query_children(alias: str) -> tuple[Any, Any]:
    """The (counter, histogram) children of one alias, resolved once: no label lookup per query."""
    labels: tuple[str, str]
    try:
        shard_map = get_shard_map()
        labels = (shard_map.cluster_of(alias).name, shard_map.server(alias).role)
    except UnknownAlias:
        labels = (alias, "unknown")
    return DB_QUERIES.labels(*labels), DB_QUERY_SECONDS.labels(*labels)


# Set while /metrics samples what it reports (e.g. the moves table): those queries are the
# scrape's own cost, not the service's traffic, and counting them would make every reading of
# shardsvc_db_queries_total change what it reads.
_not_counted: ContextVar[bool] = ContextVar("shardsvc_queries_not_counted", default=False)


@contextmanager
def queries_not_counted() -> Iterator[None]:
    token = _not_counted.set(True)
    try:
        yield
    finally:
        _not_counted.reset(token)


def _count_query(execute: Callable[..., Any], sql: str, params: Any, many: bool,
                 context: dict[str, Any]) -> Any:
    if _not_counted.get():
        return execute(sql, params, many, context)
    counter, seconds = _query_children(context["connection"].alias)
    started = time.perf_counter()
    try:
        return execute(sql, params, many, context)
    finally:
        seconds.observe(time.perf_counter() - started)
        counter.inc()


def _on_connection_created(sender: Any, connection: Any, **kwargs: Any) -> None:
    # Fires on every checkout from the pool, on a DatabaseWrapper that lives per greenlet: add
    # the wrapper once per wrapper object. First in the list (outermost), so a
    # `with connection.execute_wrapper(...)` block that is open now still pops its own wrapper.
    if _count_query not in connection.execute_wrappers:
        connection.execute_wrappers.insert(0, _count_query)


def _on_redis_event(event: str) -> None:
    if event == "error":
        REDIS_ERRORS.inc()
    elif event == "short_circuit":
        REDIS_SHORT_CIRCUITS.inc()


_installed = False
_install_lock = threading.Lock()


def install() -> None:
    """Hook query and Redis counting into this process. Idempotent; the middleware calls it."""
    global _installed
    with _install_lock:
        if _installed:
            return
        connection_created.connect(_on_connection_created, dispatch_uid="shardsvc.metrics")
        # Connections opened before the hook (e.g. at import with preload) get it now.
        for conn in connections.all(initialized_only=True):
            _on_connection_created(type(conn), conn)
        redisguard.observe(_on_redis_event)
        scatter_finished.connect(_on_scatter, dispatch_uid="shardsvc.metrics.scatter")
        _installed = True


# ----- gauges -------------------------------------------------------------------------------


# What this process's pool timeout counts were when last added to POOL_TIMEOUTS, by alias.
_pool_timeouts_seen: dict[str, int] = {}
_pool_timeouts_lock = threading.Lock()


def _sample_pool_timeouts() -> None:
    """Add the pools' new timeouts to the counter: the pool counts, this only publishes. Under a
    lock, so a scrape and the background sampler never add the same timeouts twice."""
    with _pool_timeouts_lock:
        for alias, total in timeout_counts().items():
            new = total - _pool_timeouts_seen.get(alias, 0)
            if new > 0:
                POOL_TIMEOUTS.labels(alias).inc(new)
                _pool_timeouts_seen[alias] = total


def sample() -> None:
    """Set this worker's pool and replica gauges from its in-memory state (no I/O)."""
    shard_map = get_shard_map()
    totals = {s.alias: [0, 0, 0, 0] for s in shard_map.servers()}
    for key, stats in pool_stats().items():
        row = totals.setdefault(key.alias, [0, 0, 0, 0])
        row[0] += stats.in_use
        row[1] += stats.idle
        row[2] += stats.waiting
        row[3] += stats.max_size
    for alias, (in_use, idle, waiting, max_size) in totals.items():
        POOL_CONNECTIONS.labels(alias, "in_use").set(in_use)
        POOL_CONNECTIONS.labels(alias, "idle").set(idle)
        POOL_CONNECTIONS.labels(alias, "waiting").set(waiting)
        POOL_MAX.labels(alias).set(max_size)
    _sample_pool_timeouts()

    health = get_replica_health()
    states = health.states()
    for cluster in shard_map.clusters:
        usable = set(health.usable_replicas(cluster.name))
        for server in cluster.replicas:
            state = states.get(server.alias)
            if state is None:
                continue  # not checked yet: no sample beats a made-up one
            REPLICA_LAG.labels(server.alias).set(
                state.lag_seconds if state.reachable else float("inf")
            )
            REPLICA_HEALTHY.labels(server.alias).set(1 if server.alias in usable else 0)

    breaker = redisguard.snapshot()
    REDIS_UP.labels("default").set(
        1 if breaker.state == "closed" and breaker.consecutive_failures == 0 else 0)
    REDIS_BREAKER_OPEN.labels("default").set(0 if breaker.state == "closed" else 1)
    deferred = redisguard.deferred()
    REDIS_DEFERRED.labels("pending").set(deferred.pending)
    REDIS_DEFERRED.labels("dropped").set(deferred.dropped)


class _Sampler:
    """One background loop per worker process; started by the first request it serves."""

    def __init__(self) -> None:
        self.pid: int | None = None
        self.lock = threading.Lock()

    def ensure_running(self) -> None:
        if self.pid == os.getpid():
            return
        with self.lock:
            if self.pid == os.getpid():
                return
            self.pid = os.getpid()
            # A greenlet under the gevent worker (threading is patched), a thread elsewhere.
            threading.Thread(target=self._loop, args=(self.pid,), name="shardsvc-metrics",
                             daemon=True).start()

    @staticmethod
    def _loop(pid: int) -> None:
        while os.getpid() == pid:
            try:
                sample()
            except Exception:  # a metrics bug must never take the worker down
                logger.exception("metrics sampling failed")
            time.sleep(SAMPLE_INTERVAL)


_sampler = _Sampler()


# ----- requests -----------------------------------------------------------------------------


def route_of(request: HttpRequest) -> str:
    """The URL pattern that serves `request` (bounded cardinality), or UNMATCHED_ROUTE."""
    match = getattr(request, "resolver_match", None)
    if match is None:
        # Answered before URL resolution (e.g. unknown tenant 404): resolve it now.
        try:
            match = resolve(request.path_info)
        except Resolver404:
            return UNMATCHED_ROUTE
    return match.route or UNMATCHED_ROUTE


class MetricsMiddleware:
    """Near-outermost: times every request and counts it, and its reads, once it is answered."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        install()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        _sampler.ensure_running()
        if request.path_info == "/metrics":
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        method = request.method if request.method in _METHODS else "other"
        count, seconds = _request_children(route_of(request), method, response.status_code)
        count.inc()
        seconds.observe(elapsed)
        # The routing middleware leaves the request's state set until the next request.
        routing = current_state()
        if routing is not None and routing.reads:
            _count_reads(routing.reads)
        return response


# The children of each label set, resolved once: prometheus_client's labels() takes a lock and
# checks its arguments on every call. Routes are URL patterns and methods a fixed set, so the
# label sets are few (the caches' bounds only guard against a surprise).
@functools.lru_cache(maxsize=4096)
def _request_children(route: str, method: str, status: int) -> tuple[Any, Any]:
    return REQUESTS.labels(route, method, str(status)), REQUEST_SECONDS.labels(route, method)


@functools.lru_cache(maxsize=1024)
def _read_child(alias: str, reason: str) -> Any:
    cluster: str
    target: str
    try:
        shard_map = get_shard_map()
        cluster, target = shard_map.cluster_of(alias).name, shard_map.server(alias).role
    except UnknownAlias:
        cluster, target = alias, "unknown"
    return READ_ROUTING.labels(cluster, target, reason)


def _count_reads(reads: Any) -> None:
    for (alias, reason), count in reads.items():
        _read_child(alias, reason).inc(count)
