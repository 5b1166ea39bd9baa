"""The three requests the benchmark compares, written as a plain Django project would write
them, with the SQL of the service's API (tenant column included, so the same indexes serve):

- GET  .../threads/<id>           one row of comments_thread;
- GET  .../threads/<id>/comments  the thread, a page of top-level comments (newest first, with
                                  the API's cursor format), their replies;
- POST .../threads/<id>/comments  lock the thread, insert the comment, count it, one transaction.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from django.db import transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from tests.benchmarks.plain_django.models import Comment, Thread

MAX_REPLIES_PER_PAGE = 500


def _error(status: int, message: str) -> JsonResponse:
    return JsonResponse({"error": "bad_request" if status == 400 else "not_found",
                         "message": message}, status=status)


def thread(request: HttpRequest, tenant_id: int, thread_id: int) -> JsonResponse:
    found = Thread.objects.filter(tenant_id=tenant_id, id=thread_id).first()
    if found is None:
        return _error(404, f"no thread {thread_id}")
    # Ids as strings, as the API writes them (64-bit ids do not survive JSON numbers in a browser).
    return JsonResponse({"id": str(found.id), "url": found.url, "title": found.title,
                         "comment_count": found.comment_count,
                         "created_at": found.created_at.isoformat()})


def comment_dict(comment: Comment) -> dict[str, Any]:
    return {
        "id": str(comment.id), "thread_id": str(comment.thread_id),
        "parent_id": str(comment.parent_id) if comment.parent_id else None,
        "author": comment.author, "author_name": comment.author_name,
        "body": "" if comment.deleted else comment.body, "deleted": comment.deleted,
        "score": comment.score, "depth": comment.depth,
        "created_at": comment.created_at.isoformat(),
        "edited_at": comment.edited_at.isoformat() if comment.edited_at else None,
        "replies": [],
    }


def _before(cursor: str) -> int:
    """The last id shown, from a newest-first cursor (base64 of ["newest", id])."""
    try:
        payload = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        order, last_id = payload
    except (binascii.Error, ValueError, TypeError) as exc:
        raise ValueError("malformed cursor") from exc
    if order != "newest" or not isinstance(last_id, int):
        raise ValueError("not a newest-first cursor")
    return last_id


@csrf_exempt
def comments(request: HttpRequest, tenant_id: int, thread_id: int) -> JsonResponse:
    if request.method == "POST":
        return post_comment(request, tenant_id, thread_id)
    try:
        limit = min(max(int(request.GET.get("limit", "20")), 1), 100)
        cursor = request.GET.get("cursor")
        before = _before(cursor) if cursor else None
    except ValueError as exc:
        return _error(400, str(exc))
    if not Thread.objects.filter(tenant_id=tenant_id, id=thread_id).exists():
        return _error(404, f"no thread {thread_id}")
    roots = Comment.objects.filter(tenant_id=tenant_id, thread_id=thread_id,
                                   parent__isnull=True).order_by("-id")
    if before is not None:
        roots = roots.filter(id__lt=before)
    page = list(roots[: limit + 1])
    more = len(page) > limit
    page = page[:limit]
    items = [comment_dict(c) for c in page]
    by_id = {item["id"]: item for item in items}
    if page:
        replies = Comment.objects.filter(tenant_id=tenant_id, root_id__in=[c.id for c in page])
        for reply in replies.order_by("id")[:MAX_REPLIES_PER_PAGE]:
            node = comment_dict(reply)
            by_id[node["id"]] = node
            parent = by_id.get(str(reply.parent_id))
            if parent is not None:
                parent["replies"].append(node)
    next_cursor = None
    if more and page:
        raw = json.dumps(["newest", page[-1].id], separators=(",", ":")).encode()
        next_cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    return JsonResponse({"items": items, "next_cursor": next_cursor})


def post_comment(request: HttpRequest, tenant_id: int, thread_id: int) -> JsonResponse:
    try:
        payload = json.loads(request.body)
        body = payload["body"]
        if not isinstance(body, str) or not body.strip():
            raise ValueError("body must be a non-empty string")
    except (ValueError, KeyError, TypeError) as exc:
        return _error(400, f"bad comment: {exc}")
    author = str(payload.get("author", "plain"))
    with transaction.atomic():
        found = Thread.objects.select_for_update().filter(tenant_id=tenant_id,
                                                          id=thread_id).first()
        if found is None:
            return _error(404, f"no thread {thread_id}")
        comment = Comment.objects.create(tenant_id=tenant_id, thread=found, author=author,
                                         author_name=author, body=body)
        Thread.objects.filter(tenant_id=tenant_id, id=thread_id).update(
            comment_count=F("comment_count") + 1)
    return JsonResponse(comment_dict(comment), status=201)
