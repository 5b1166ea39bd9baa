"""Endpoints the test suite uses to drive the pool and the router through the real service.

Mounted only by the test URLconf (tests/urls.py), never in production: they let a caller hold
database connections and read across tenants.
"""

from __future__ import annotations

import os
import uuid

from django.conf import settings
from django.db import connections
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

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
    """POST: create a thread for the current tenant. Used by routing tests and benchmarks."""
    from comments.models import Thread

    if request.method != "POST":
        return JsonResponse({"error": "POST only"}, status=405)
    url = request.GET.get("url") or f"/page/{uuid.uuid4().hex}"
    thread = Thread.objects.create(url=url, title=request.GET.get("title", ""))
    return JsonResponse({"id": thread.id, "tenant_id": thread.tenant_id, "url": thread.url},
                        status=201)


def thread(request: HttpRequest, tenant: str, thread_id: int) -> JsonResponse:
    """GET one thread through the router; says which database served the read."""
    from comments.models import Thread

    found = Thread.objects.filter(id=thread_id).values("id", "tenant_id", "url").first()
    body = {"thread": found, **_served_by()}
    return JsonResponse(body, status=200 if found else 404)


def thread_plain(request: HttpRequest, alias: str, thread_id: int) -> JsonResponse:
    """The same ORM query on one fixed database, with no tenant lookup and no router: the
    baseline the routing benchmark compares against, so the ratio prices routing alone."""
    from comments.models import Thread

    if alias not in settings.DATABASES:
        return JsonResponse({"error": "bad alias"}, status=400)
    found = Thread.unscoped.using(alias).filter(id=thread_id).values(
        "id", "tenant_id", "url").first()
    return JsonResponse({"thread": found}, status=200 if found else 404)


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


def comments_plain(request: HttpRequest, alias: str, tenant_id: int,
                   thread_id: int) -> JsonResponse:
    """The read of `GET /api/sites/<site>/threads/<id>/comments` (the thread, a page of
    top-level comments newest first, their replies) with the same SQL on one fixed database:
    no tenant lookup, no API key, no router, no cache, no API framework. The load benchmark's
    baseline (tests/benchmarks/bench_load.py)."""
    from comments import cursors
    from comments.models import Comment, Thread
    from comments.service import page_with_replies

    if alias not in settings.DATABASES:
        return JsonResponse({"error": "bad alias"}, status=400)
    try:
        limit = min(max(int(request.GET.get("limit", "20")), 1), 100)
    except ValueError:
        return JsonResponse({"error": "bad limit"}, status=400)
    own = {"tenant_id": tenant_id}
    if Thread.unscoped.using(alias).filter(**own, id=thread_id).first() is None:
        return JsonResponse({"error": "not_found"}, status=404)
    roots = Comment.unscoped.using(alias).filter(
        **own, thread_id=thread_id, parent__isnull=True).order_by("-id")
    items, page, more = page_with_replies(
        roots, Comment.unscoped.using(alias).filter(**own), limit)
    next_cursor = cursors.encode("newest", [page[-1].id]) if more and page else None
    return JsonResponse({"items": items, "next_cursor": next_cursor})
