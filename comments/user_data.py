"""One person's comments on every site: export them, erase them (data-protection requests).

Sites that share an identity provider know a person by the same author id, so a request covers
every site and every shard. Both walks go shard by shard over the shard primaries (exact: an
export right after an erasure must not read a lagging replica), only over the tenants the
directory places on that shard (routers.scatter.read_placement: a moving tenant's copy is not read
twice), in batches by id.

Votes name their voter too: the export lists them, and erasure deletes them (taking each one's
value off its comment's score), batch by batch as for comments.

Erasure blanks the body, the author's name and id and marks the comment deleted: replies of
other people keep their place in the tree, as with a soft delete. The author id is replaced by a
tag of the erasure job (`erased:<job id>`), written in the same transaction as the blanking, so
the report (rows per site) is counted from the databases themselves: a run killed at any point
and run again finishes the job and reports every row once, and a run over an author with nothing
left erases nothing. The job id is kept in a progress file (written atomically, fsynced) so a
rerun continues the same job; the tag carries no personal data.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from django.db import connections, transaction
from django.db.models import F
from django.utils import timezone

from comments import cache
from comments.models import Comment, Thread, Vote
from routers.scatter import read_placement
from routers.scatter_queries import aggregate
from shards.directory import TenantEntry, lookup
from shards.lsn import parse_lsn
from shards.topology import get_shard_map

BATCH = 500
TAG_PREFIX = "erased:"

Say = Callable[[str], None]


class UserDataError(RuntimeError):
    """A request that cannot run as asked; the message says what to do."""


def comment_record(comment: Comment, site: str, shard: str) -> dict[str, Any]:
    return {
        "id": comment.id, "site": site, "shard": shard, "thread_id": comment.thread_id,
        "parent_id": comment.parent_id, "author": comment.author,
        "author_name": comment.author_name, "body": comment.body, "deleted": comment.deleted,
        "score": comment.score, "created_at": comment.created_at.isoformat(),
        "edited_at": comment.edited_at.isoformat() if comment.edited_at else None,
    }


def export(author: str, *, say: Say) -> dict[str, Any]:
    """Every comment of `author` on every site, oldest first."""
    placement = read_placement()
    names = get_shard_map().shard_names
    records: list[dict[str, Any]] = []
    votes: list[dict[str, Any]] = []
    for number, shard in enumerate(names, 1):
        owned = placement.tenants.get(shard, {})
        found = 0
        last = 0
        while owned:
            batch = list(Comment.unscoped.using(shard).filter(
                author=author, tenant_id__in=list(owned), id__gt=last).order_by("id")[:BATCH])
            if not batch:
                break
            records += [comment_record(c, owned[c.tenant_id], shard) for c in batch]
            found += len(batch)
            last = batch[-1].id
        cast = _export_votes(shard, owned, author, votes)
        say(f"[{number}/{len(names)} {shard}] {found} comment(s) and {cast} vote(s) of "
            f"{len(owned)} site(s)")
    records.sort(key=lambda r: r["id"])
    votes.sort(key=lambda v: (v["created_at"], v["comment_id"]))
    return {"author": author, "exported_at": timezone.now().isoformat(),
            "count": len(records), "sites": dict(Counter(r["site"] for r in records)),
            "comments": records, "votes": votes}


def _export_votes(shard: str, owned: dict[int, str], voter: str,
                  into: list[dict[str, Any]]) -> int:
    found = 0
    last = 0
    while owned:
        batch = list(Vote.unscoped.using(shard).filter(
            voter=voter, tenant_id__in=list(owned), id__gt=last).order_by("id")
            .values_list("id", "tenant_id", "comment_id", "value", "created_at")[:BATCH])
        if not batch:
            break
        into += [{"site": owned[tenant_id], "shard": shard, "comment_id": comment_id,
                  "value": value, "created_at": created_at.isoformat()}
                 for _, tenant_id, comment_id, value, created_at in batch]
        found += len(batch)
        last = batch[-1][0]
    return found


@dataclass
class ErasureProgress:
    """The progress file of one erasure: its job id, and what is finished."""

    path: Path
    author_digest: str
    job: str
    shards_done: list[str] = field(default_factory=list)
    finished: bool = False

    @classmethod
    def open(cls, path: Path, author: str) -> ErasureProgress:
        digest = author_digest(author)
        if path.exists():
            try:
                data = json.loads(path.read_text())
                progress = cls(path=path, author_digest=data["author"], job=data["job"],
                               shards_done=list(data["shards_done"]),
                               finished=bool(data["finished"]))
            except (ValueError, KeyError, TypeError) as exc:
                raise UserDataError(f"progress file {path} is unreadable ({exc}): move it away "
                                    "to start a new erasure job") from exc
            if progress.author_digest != digest:
                raise UserDataError(f"progress file {path} belongs to another author: pass "
                                    "--progress with this author's file, or a new path")
            return progress
        progress = cls(path=path, author_digest=digest, job=uuid.uuid4().hex)
        progress.save()
        return progress

    @property
    def tag(self) -> str:
        return f"{TAG_PREFIX}{self.job}"

    def save(self) -> None:
        data = {"author": self.author_digest, "job": self.job, "shards_done": self.shards_done,
                "finished": self.finished}
        temporary = self.path.with_name(self.path.name + ".tmp")
        with temporary.open("w") as handle:
            json.dump(data, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a crash too
        finally:
            os.close(directory)


def author_digest(author: str) -> str:
    return hashlib.sha256(author.encode()).hexdigest()


def default_progress_path(author: str) -> Path:
    return Path(f"user_data-erase-{author_digest(author)[:16]}.json")


def erase(author: str, progress: ErasureProgress, *, say: Say,
          crash_after: int | None = None) -> dict[str, int]:
    """Erase every comment of `author` on every shard; returns rows erased per site by this job
    (over all its runs). `crash_after`: fault injection for tests, the process dies once that
    many rows were erased by this run."""
    placement = read_placement()
    names = get_shard_map().shard_names
    erased_now = 0
    for number, shard in enumerate(names, 1):
        prefix = f"[{number}/{len(names)} {shard}]"
        owned = list(placement.tenants.get(shard, {}))
        count = 0
        while owned:
            done = _erase_batch(shard, owned, author, progress.tag)
            if not done:
                break
            count += done
            erased_now += done
            say(f"{prefix} {count} comment(s) erased")
            if crash_after is not None and erased_now >= crash_after:
                os._exit(70)  # fault injection: die with the job half done
        # Deleted votes leave nothing to count later: a rerun finds none left.
        removed = 0
        while owned and (done := _erase_votes_batch(shard, owned, author)):
            removed += done
        if removed:
            say(f"{prefix} {removed} vote(s) deleted")
        if shard not in progress.shards_done:
            progress.shards_done.append(shard)
            progress.save()
        say(f"{prefix} done: {count} comment(s) erased in this run")
    progress.finished = True
    progress.save()
    return report(progress.tag)


def _erase_batch(shard: str, tenants: list[int], author: str, tag: str) -> int:
    with transaction.atomic(using=shard):
        rows = list(Comment.unscoped.using(shard).select_for_update().filter(
            author=author, tenant_id__in=tenants).order_by("id")
            .values_list("id", "tenant_id", "thread_id", "deleted")[:BATCH])
        if not rows:
            return 0
        Comment.unscoped.using(shard).filter(id__in=[r[0] for r in rows]).update(
            author=tag, author_name="", body="", deleted=True)
        # Soft-deleted comments leave their thread's count, as a delete by the author does.
        visible = Counter((tenant_id, thread) for _, tenant_id, thread, deleted in rows
                          if not deleted)
        for (tenant_id, thread), n in visible.items():
            Thread.unscoped.using(shard).filter(id=thread, tenant_id=tenant_id).update(
                comment_count=F("comment_count") - n)
    _forget_cached_pages(shard, {(tenant_id, thread) for _, tenant_id, thread, _ in rows})
    return len(rows)


def _erase_votes_batch(shard: str, tenants: list[int], voter: str) -> int:
    with transaction.atomic(using=shard):
        rows = list(Vote.unscoped.using(shard).select_for_update().filter(
            voter=voter, tenant_id__in=tenants).order_by("id")
            .values_list("id", "tenant_id", "comment_id", "value")[:BATCH])
        if not rows:
            return 0
        Vote.unscoped.using(shard).filter(id__in=[r[0] for r in rows]).delete()
        scores: Counter[tuple[int, int]] = Counter()
        for _, tenant_id, comment_id, value in rows:
            scores[(tenant_id, comment_id)] += value
        for (tenant_id, comment_id), total in scores.items():
            Comment.unscoped.using(shard).filter(id=comment_id, tenant_id=tenant_id).update(
                score=F("score") - total)
        threads = set(Comment.unscoped.using(shard).filter(
            id__in=[comment for _, comment in scores]).values_list("tenant_id", "thread_id"))
    _forget_cached_pages(shard, threads)
    return len(rows)


def _forget_cached_pages(shard: str, threads: set[tuple[int, int]]) -> None:
    with connections[shard].cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_lsn()::text")
        lsn = parse_lsn(cursor.fetchone()[0])
    entries: dict[int, TenantEntry] = {}
    for tenant_id, thread in threads:
        entry = entries.get(tenant_id) or entries.setdefault(tenant_id, lookup(tenant_id))
        cache.raise_mark(entry, thread, lsn)


def report(tag: str) -> dict[str, int]:
    """Rows erased by the job of `tag`, per site, counted on every shard's primary."""
    result = aggregate(Comment.unscoped.filter(author=tag), function="count",
                       group_by="tenant_id", allow_partial=False, primary=True,
                       timeout=30, deadline=35)
    return {result.placement.slug(tenant_id): n for tenant_id, n in sorted(
        result.values.items(), key=lambda item: result.placement.slug(item[0]))}
