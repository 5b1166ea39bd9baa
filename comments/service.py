"""What the API does, as plain functions over the current tenant's shard."""

from __future__ import annotations

from typing import Any

from django.db import IntegrityError, transaction
from django.db.models import F, QuerySet, Value
from django.db.models.functions import MD5
from django.utils import timezone

from comments import cache, cursors, live, new_comment, page_reads
from comments.models import MAX_DEPTH, Comment, Thread, Vote
from comments.schemas import Order, page_json
from routers import causal
from routers.write_hold import retry_writes
from shards.row_by_id import RowById
from shards.tenancy import current_tenant
from sites.throttle import DeferredRead


class NotFound(LookupError):
    pass


class Forbidden(PermissionError):
    pass


class Invalid(ValueError):
    pass


class Conflict(ValueError):
    pass


def _shard() -> str:
    entry = current_tenant()
    assert entry is not None, "the API only runs with a tenant"
    return entry.shard


def _after_write(kind: live.Kind, comment: Comment) -> None:
    """The thread's write mark raised and its live event published, in one Redis call."""
    entry = current_tenant()
    assert entry is not None
    cache.raise_mark(entry, comment.thread_id, causal.position_after_writes(entry.shard),
                     event=live.event(kind, comment_dict(comment)))


def threads_at(url: str, using: str) -> QuerySet[Thread]:
    """The thread of `url` (at most one). It filters on md5(url), the expression the unique
    index holds, so the index serves the lookup, and on the URL itself, so a hash collision
    never finds another page's thread."""
    return (Thread.objects.using(using).alias(url_md5=MD5("url"))
            .filter(url_md5=MD5(Value(url)), url=url))


@retry_writes
def get_or_create_thread(url: str, title: str) -> tuple[Thread, bool]:
    shard = _shard()
    existing = threads_at(url, shard).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic(using=shard):
            return Thread.objects.db_manager(shard).create(url=url, title=title), True
    except IntegrityError:
        pass
    # Another request created it between our read and insert: read it back.
    existing = threads_at(url, shard).first()
    if existing is None:
        raise Conflict("another page of this site has a URL with the same hash; "
                       "change the URL (e.g. add a query parameter)")
    return existing, False


# The API's most frequent read, and the comment count every write changes: their statements
# compiled once (shards.row_by_id).
_THREAD_BY_ID = RowById(Thread)


def no_thread(thread_id: int) -> NotFound:
    """What a request naming a thread the current site does not have is answered with."""
    return NotFound(f"no thread {thread_id} on this site")


def get_thread(thread_id: int) -> Thread:
    thread = _THREAD_BY_ID.get(thread_id)
    if thread is None:
        raise no_thread(thread_id)
    return thread


def comment_dict(comment: Comment) -> dict[str, Any]:
    return page_reads.comment_item([getattr(comment, field) for field in page_reads.FIELDS])


def cached_comment_page(thread_id: int, order: Order, cursor: str | None, limit: int, *,
                        throttle_check: DeferredRead | None = None) -> tuple[bytes, str]:
    """(the page's JSON answer, how the cache served it: "hit", "fill", "wait", "bypass");
    `throttle_check` is read with the page (comments.cache.cached_page)."""
    entry = current_tenant()
    assert entry is not None
    if cursor:
        cursors.decode(cursor, order)  # refuse garbage before it becomes a cache key

    def fill() -> bytes:
        page = page_reads.comment_page(thread_id, order, cursor, limit)
        if page is None:
            raise no_thread(thread_id)
        return page_json(page)

    return cache.cached_page(entry, thread_id, f"{order}:{cursor or ''}:{limit}", fill,
                             also=throttle_check)


@retry_writes
def post_comment(thread_id: int, *, author: str, author_name: str, body: str,
                 parent_id: int | None) -> Comment:
    if parent_id is None:
        # The most frequent write, in two round trips instead of four (comments.new_comment).
        created = new_comment.post_top_level(_shard(), thread_id, author=author,
                                             author_name=author_name, body=body)
        if created is None:
            raise no_thread(thread_id)
        _after_write("created", created)
        return created
    with causal.write_transaction(_shard()):
        # The count first: the UPDATE finds the thread and locks its row (as SELECT FOR
        # UPDATE did) in one statement; a missing thread updates nothing.
        if not _THREAD_BY_ID.add(thread_id, "comment_count", 1):
            raise no_thread(thread_id)
        parent = Comment.objects.filter(id=parent_id, thread_id=thread_id).first()
        if parent is None:
            raise NotFound(f"no comment {parent_id} in thread {thread_id}")
        if parent.depth >= MAX_DEPTH:
            raise Invalid(f"replies nest at most {MAX_DEPTH} levels deep")
        comment = Comment.objects.create(
            thread_id=thread_id, parent=parent, root_id=parent.root_id or parent.id,
            depth=parent.depth + 1, author=author, author_name=author_name, body=body,
        )
    _after_write("created", comment)
    return comment


def _own_comment(comment_id: int, user: str) -> Comment:
    comment = Comment.objects.select_for_update().filter(id=comment_id).first()
    if comment is None or comment.deleted:
        raise NotFound(f"no comment {comment_id} on this site")
    if comment.author != user:
        raise Forbidden("only the author may change this comment")
    return comment


@retry_writes
def edit_comment(comment_id: int, *, user: str, body: str) -> Comment:
    with causal.write_transaction(_shard()):
        comment = _own_comment(comment_id, user)
        comment.body = body
        comment.edited_at = timezone.now()
        comment.save(update_fields=["body", "edited_at"])
    _after_write("edited", comment)
    return comment


@retry_writes
def delete_comment(comment_id: int, *, user: str) -> None:
    with causal.write_transaction(_shard()):
        comment = _own_comment(comment_id, user)
        comment.deleted = True
        comment.save(update_fields=["deleted"])
        _THREAD_BY_ID.add(comment.thread_id, "comment_count", -1)
    _after_write("deleted", comment)


@retry_writes
def moderate_delete(comment_id: int) -> bool:
    """Soft-delete a comment of the current tenant for a moderator (no authorship check), as
    delete_comment does. False when it was deleted already: repeating the action is harmless."""
    with causal.write_transaction(_shard()):
        comment = Comment.objects.select_for_update().filter(id=comment_id).first()
        if comment is None:
            raise NotFound("no such comment on this site")
        if comment.deleted:
            return False
        comment.deleted = True
        comment.save(update_fields=["deleted"])
        _THREAD_BY_ID.add(comment.thread_id, "comment_count", -1)
    _after_write("deleted", comment)
    return True


@retry_writes
def vote(comment_id: int, *, user: str, value: int) -> tuple[int, int]:
    """Set the user's vote (1, -1, or 0 to remove); idempotent. Returns (value, new score)."""
    with causal.write_transaction(_shard()):
        comment = Comment.objects.select_for_update().filter(id=comment_id).first()
        if comment is None or comment.deleted:
            raise NotFound(f"no comment {comment_id} on this site")
        existing = Vote.objects.filter(comment_id=comment_id, voter=user).first()
        before = existing.value if existing else 0
        if value == 0 and existing:
            existing.delete()
        elif value != 0 and existing and existing.value != value:
            existing.value = value
            existing.save(update_fields=["value"])
        elif value != 0 and not existing:
            Vote.objects.create(comment=comment, voter=user, value=value)
        if value != before:
            comment.score += value - before
            Comment.objects.filter(id=comment_id).update(score=F("score") + (value - before))
    if value != before:
        _after_write("voted", comment)
    return value, comment.score


def comment_counts(thread_ids: list[int]) -> dict[str, int]:
    rows = Thread.objects.filter(id__in=thread_ids).values_list("id", "comment_count")
    return {str(thread_id): count for thread_id, count in rows}
