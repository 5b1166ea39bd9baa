"""Endpoints the test suite uses to drive the pool and the router through the real service.

Mounted only by the test URLconf (tests/urls.py), never in production: they let a caller hold
database connections and read across tenants.
"""

from __future__ import annotations

import math
import os
import time
import uuid

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from routers.replicas import get_replica_health
from routers.state import current_state, request_tenant
from shards.aliases import CONTROL_ALIAS


def _alias(request: HttpRequest) -> str:
    alias = request.GET.get("alias", CONTROL_ALIAS)
    if alias not in settings.DATABASES:
        raise KeyError(alias)
    return alias


def sleep(request: HttpRequest) -> JsonResponse:
    try:
        alias = _alias(request)
        seconds = min(float(request.GET.get("seconds", "0.2")), 10.0)
    except (KeyError, ValueError):
        return JsonResponse({"error": "bad alias or seconds"}, status=400)
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_backend_pid(), pg_sleep(%s)", [seconds])
        pid = cursor.fetchone()[0]
    return JsonResponse({"alias": alias, "backend_pid": pid, "slept": seconds})


def session(request: HttpRequest) -> JsonResponse:
    try:
        alias = _alias(request)
    except KeyError:
        return JsonResponse({"error": "bad alias"}, status=400)
    with connections[alias].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('TimeZone'), current_user, now()::text, "
            "current_setting('transaction_isolation')"
        )
        timezone, user, now, isolation = cursor.fetchone()
    return JsonResponse({"alias": alias, "timezone": timezone, "user": user, "now": now,
                         "isolation": isolation})


def _served_by() -> dict[str, str | int]:
    routing = current_state()
    reads = dict(routing.reads) if routing is not None else {}
    last = next(reversed(reads), ("", "")) if reads else ("", "")
    return {"served_by": last[0], "reason": last[1], "pid": os.getpid()}


@csrf_exempt
def threads(request: HttpRequest, tenant: str) -> JsonResponse:
    """POST: create a thread for the current tenant. Used by the routing and metrics tests."""
    from comments.models import Thread

    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    url = request.GET.get("url") or f"/page/{uuid.uuid4().hex}"
    thread = Thread.objects.create(url=url, title=request.GET.get("title", ""))
    return JsonResponse({"id": thread.id, "tenant_id": thread.tenant_id, "url": thread.url},
                        status=201)


def thread(request: HttpRequest, tenant: str, thread_id: int) -> JsonResponse:
    """GET one thread as the API reads it (comments.service.get_thread: routed, retried on a
    failing replica); says which database served the read."""
    from comments import service

    try:
        row = service.get_thread(thread_id)
    except service.NotFound:
        found = None
    else:
        found = {"id": row.id, "tenant_id": row.tenant_id, "url": row.url}
    body = {"thread": found, **_served_by()}
    return JsonResponse(body, status=200 if found else 404)


def middleware(request: HttpRequest) -> JsonResponse:
    """Which of the browser-only middleware (settings.BROWSER_ONLY_MIDDLEWARE) ran for this
    request: each leaves its attribute on the request."""
    return JsonResponse({"session": hasattr(request, "session"),
                         "user": hasattr(request, "user"),
                         "messages": hasattr(request, "_messages")})


def where(request: HttpRequest, tenant: str) -> JsonResponse:
    """The current tenant's directory entry as this worker sees it."""
    entry = request_tenant()
    if entry is None:
        return JsonResponse({"error": "no tenant"}, status=404)
    return JsonResponse({"slug": entry.slug, "shard": entry.shard, "version": entry.version,
                         "pid": os.getpid()})


def spin(request: HttpRequest) -> JsonResponse:
    """Burn `ms` milliseconds of CPU in slices of `slice_ms`, yielding to the worker's other
    greenlets between slices (`time.sleep(0)` is gevent's under the worker), as a CPU-heavy
    request with quick I/O in between does: many of these keep the worker's loop busy."""
    try:
        ms = min(max(float(request.GET.get("ms", "50")), 0.0), 1000.0)
        slice_ms = min(max(float(request.GET.get("slice_ms", str(ms))), 1.0), 1000.0)
    except ValueError:
        return JsonResponse({"error": "bad ms or slice_ms"}, status=400)
    until = time.monotonic() + ms / 1000
    rounds = 0
    while (now := time.monotonic()) < until:
        slice_end = min(until, now + slice_ms / 1000)
        while time.monotonic() < slice_end:
            rounds += 1
        time.sleep(0)
    return JsonResponse({"spun_ms": ms, "rounds": rounds, "pid": os.getpid()})


def replicas(request: HttpRequest) -> JsonResponse:
    """This worker's replica states as its router reads them, and which replicas it would use."""
    health = get_replica_health()
    states = {
        alias: {"reachable": s.reachable, "in_recovery": s.in_recovery, "error": s.error,
                "lag_seconds": s.lag_seconds if math.isfinite(s.lag_seconds) else None,
                "lag_bytes": s.lag_bytes, "checked_at": s.checked_at}
        for alias, s in health.states().items()
    }
    usable = {cluster: health.usable_replicas(cluster)
              for cluster in {state.cluster for state in health.states().values()}}
    return JsonResponse({"pid": os.getpid(), "states": states, "usable": usable})
