"""Liveness and readiness endpoints.

- `/healthz`: the process is alive; touches no database.
- `/readyz`: this host can serve, the answer a load balancer acts on: its pool hands out a
  connection to the control database (the tenant directory's home) and its shard map is
  loaded. One shard down never makes it 503, or a load balancer would take every tenant
  offline for one shard; a host that cannot reach the directory can serve no tenant at all.
- `/readyz/shards`: every database and Redis in detail (also the `shardsvc_database_up`
  gauge); 503 when any primary is unreachable or read-only. For dashboards and people.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from django.db import DatabaseError, connections, transaction
from django.http import HttpRequest, JsonResponse

from project.metrics import DATABASE_UP
from shards import redisguard
from shards.aliases import CONTROL_ALIAS
from shards.topology import get_shard_map

# A health check must answer fast even when a server hangs.
CHECK_STATEMENT_TIMEOUT = "2s"

PRIMARY_SQL = "SELECT pg_is_in_recovery(), current_setting('transaction_read_only') = 'on'"
REPLICA_SQL = (
    "SELECT pg_is_in_recovery(), "
    "CASE WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()) END, "
    "pg_last_wal_replay_lsn()::text"
)


def healthz(request: HttpRequest) -> JsonResponse:
    """The process is alive and serving; touches no database."""
    return JsonResponse({"status": "ok"})


def check_alias(alias: str, role: str) -> dict[str, Any]:
    """One database's readiness, seen through the same pool and PgBouncer as requests."""
    entry: dict[str, Any] = {"role": role, "reachable": False}
    try:
        with transaction.atomic(using=alias), connections[alias].cursor() as cursor:
            cursor.execute(f"SET LOCAL statement_timeout = '{CHECK_STATEMENT_TIMEOUT}'")
            if role == "primary":
                cursor.execute(PRIMARY_SQL)
                in_recovery, read_only = cursor.fetchone()
                entry.update(reachable=True, writable=not in_recovery and not read_only)
            else:
                cursor.execute(REPLICA_SQL)
                in_recovery, lag, replay_lsn = cursor.fetchone()
                entry.update(
                    reachable=True,
                    in_recovery=in_recovery,
                    lag_seconds=round(float(lag or 0), 3),
                    replay_lsn=replay_lsn,
                )
    except DatabaseError as exc:
        text = str(exc).strip()
        entry["error"] = text.splitlines()[0] if text else type(exc).__name__
    finally:
        connections[alias].close()
    return entry


def readyz(request: HttpRequest) -> JsonResponse:
    """This host can serve: 200, or 503 when its pool cannot reach the tenant directory."""
    shard_map = get_shard_map()
    directory = check_alias(CONTROL_ALIAS, "primary")
    ready = bool(directory["reachable"])
    return JsonResponse(
        {
            "status": "ready" if ready else "unready",
            "directory": directory,
            "shards": len(shard_map.shard_names),
        },
        status=200 if ready else 503,
    )


def shard_health(request: HttpRequest) -> JsonResponse:
    """Per-alias readiness, and Redis's; 503 when any primary is unreachable or not writable.

    A replica that is down only degrades reads (they fall back to the primary), and Redis down
    (or skipped by this worker's open breaker) only costs cache hits, so either is reported as
    "degraded" but not "unavailable".
    """
    shard_map = get_shard_map()
    servers = list(shard_map.servers())
    # Threads are greenlets under the gevent worker: the checks overlap, and each runs on its
    # own Django connection.
    with ThreadPoolExecutor(max_workers=len(servers) + 1) as executor:
        redis_check = executor.submit(redisguard.check)
        results = dict(
            zip(
                (s.alias for s in servers),
                executor.map(lambda s: check_alias(s.alias, s.role), servers),
                strict=True,
            )
        )
    for alias, result in results.items():
        up = result.get("writable") if result["role"] == "primary" else result["reachable"]
        DATABASE_UP.labels(alias=alias, role=result["role"]).set(1 if up else 0)
    primaries_ok = all(
        r.get("writable") for r in results.values() if r["role"] == "primary"
    )
    # Under Patroni every member is listed as a read candidate (any of them may lead after a
    # failover); the one leading now is not in recovery, is not read from, and is no fault.
    replicas_ok = all(
        r["reachable"] and (r.get("in_recovery") or bool(shard_map.cluster_of(alias).patroni))
        for alias, r in results.items() if r["role"] == "replica"
    )
    redis = redis_check.result()
    redis_ok = redis["reachable"] and redis["breaker"] == "closed"
    redis["status"] = "up" if redis_ok else "down"
    healthy = primaries_ok and replicas_ok and redis_ok
    status = "ok" if healthy else "degraded" if primaries_ok else "unavailable"
    return JsonResponse(
        {"status": status, "databases": results, "redis": redis},
        status=200 if primaries_ok else 503,
    )
