"""Ops endpoints over every site's comments: /api/ops/comments (ops token).

    GET    /api/ops/comments?order=newest&author=<id>&cursor=&limit=&partial=allow|fail&timeout=
    GET    /api/ops/comments/counts?by=site|author&author=<id>&partial=allow|fail
    DELETE /api/ops/comments/{site}/{comment_id}      soft-delete (moderation), on its site's shard

Listings and counts are scatter-gather reads over every shard (routers/scatter_queries.py):
merged in order, paged by an opaque signed cursor, and explicit when a shard did not answer.
"""

from __future__ import annotations

from typing import Annotated, Literal

from django.db.models import QuerySet
from django.http import HttpRequest
from ninja import Path, Query, Router, Schema

from comments import service
from comments.models import Comment
from comments.schemas import IdIn, IdOut
from routers.scatter import ShardFailure
from routers.scatter_queries import aggregate, query_page
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.scatter_cursor import MAX_CURSOR
from shards.tenancy import tenant
from sites.api import OpsToken
from sites.schemas import ErrorOut

ORDERS = {"newest": ["-id"], "oldest": ["id"]}
MAX_AUTHOR = 150
# The deadline of the whole call is the per-shard timeout plus time for placement and merge.
DEADLINE_MARGIN = 0.5


Partial = Annotated[Literal["allow", "fail"], Query(
    description="allow: answer with the shards that did (partial: true names the others); "
                "fail: answer 503 unless every shard did")]
Timeout = Annotated[float, Query(ge=0.05, le=10, description="seconds each shard may take")]


class FailedShardOut(Schema):
    shard: str
    reason: str
    message: str


class IncompleteOut(ErrorOut):
    failed_shards: list[FailedShardOut] = []


router = Router(auth=OpsToken(), tags=["ops"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 404: ErrorOut, 422: ErrorOut, 429: ErrorOut,
          503: IncompleteOut}


class OpsCommentOut(Schema):
    id: IdOut
    site: str
    shard: str
    thread_id: IdOut
    parent_id: IdOut | None
    author: str
    author_name: str
    body: str
    deleted: bool
    created_at: str


class OpsCommentPageOut(Schema):
    items: list[OpsCommentOut]
    next_cursor: str | None
    partial: bool
    failed_shards: list[FailedShardOut]


class CountsByOut(Schema):
    by: str
    counts: dict[str, int]
    total: int
    partial: bool
    failed_shards: list[FailedShardOut]


class ModeratedOut(Schema):
    id: IdOut
    site: str
    deleted: bool
    changed: bool


def comments_by(author: str | None) -> QuerySet[Comment]:
    """Every site's comments, or one author's."""
    if author is None:
        return Comment.unscoped.all()
    # PostgreSQL text cannot hold NUL: refuse it here rather than fail on every shard.
    if "\x00" in author:
        raise service.Invalid("author must not contain NUL characters")
    return Comment.unscoped.filter(author=author)


def failed(failures: list[ShardFailure]) -> list[dict[str, str]]:
    return [{"shard": f.shard, "reason": f.reason, "message": f.public_message}
            for f in failures]


@router.get("", response={200: OpsCommentPageOut, **ERRORS})
def list_comments(
    request: HttpRequest,
    order: Annotated[Literal["newest", "oldest"], Query()] = "newest",
    author: Annotated[str | None, Query(min_length=1, max_length=MAX_AUTHOR)] = None,
    cursor: Annotated[str | None, Query(max_length=MAX_CURSOR, description="next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    partial: Partial = "allow",
    timeout: Timeout = 2.0,
):
    """Comments of every site, merged across shards, newest (or oldest) first."""
    rows = comments_by(author)
    # IncompleteScatter (503, naming the shards) and a bad cursor (400) are answered by the
    # error map (project/error_map.py), as every API error is.
    page = query_page(rows, order_by=ORDERS[order], limit=limit, cursor=cursor,
                      scope=f"author={author!r}", allow_partial=partial == "allow",
                      timeout=timeout, deadline=timeout + DEADLINE_MARGIN)
    items = [{
        "id": c.id, "site": page.placement.slug(c.tenant_id), "shard": shard,
        "thread_id": c.thread_id, "parent_id": c.parent_id, "author": c.author,
        "author_name": c.author_name, "body": "" if c.deleted else c.body,
        "deleted": c.deleted, "created_at": c.created_at.isoformat(),
    } for shard, c in page.items]
    return {"items": items, "next_cursor": page.next_cursor, "partial": page.partial,
            "failed_shards": failed(page.failures)}


@router.get("/counts", response={200: CountsByOut, **ERRORS})
def count_comments(
    request: HttpRequest,
    by: Annotated[Literal["site", "author"], Query()] = "site",
    author: Annotated[str | None, Query(min_length=1, max_length=MAX_AUTHOR)] = None,
    partial: Partial = "allow",
    timeout: Timeout = 2.0,
):
    """Comment counts over every shard, by site or by author."""
    rows = comments_by(author)
    result = aggregate(rows, function="count", group_by="tenant_id" if by == "site"
                       else "author", allow_partial=partial == "allow", timeout=timeout,
                       deadline=timeout + DEADLINE_MARGIN)
    if by == "site":
        counts = {result.placement.slug(k): v for k, v in result.values.items()}
    else:
        counts = {str(k): v for k, v in result.values.items()}
    return {"by": by, "counts": counts, "total": sum(counts.values()),
            "partial": result.partial, "failed_shards": failed(result.failures)}


@router.delete("/{site}/{comment_id}", response={200: ModeratedOut, **ERRORS})
def moderate(
    request: HttpRequest,
    site: Annotated[str, Path(max_length=63, description="the comment's site (slug)")],
    comment_id: Annotated[IdIn, Path()],
):
    """Soft-delete one comment (as found by the listing), on its site's shard."""
    try:
        with tenant(site) as entry:
            changed = service.moderate_delete(comment_id)
    except (UnknownTenant, MalformedTenantKey):
        raise service.NotFound(f"no site {site!r}") from None
    return {"id": comment_id, "site": entry.slug, "deleted": True, "changed": changed}
