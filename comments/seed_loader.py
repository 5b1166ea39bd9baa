"""Loading one shard's demo sites: threads, then comments and votes by COPY in batches.

Each batch is one transaction that also raises the touched threads' `comment_count` (threads
locked in id order), so an interrupted run leaves only whole batches and every count right.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Iterator
from typing import Any

from comments import cache
from comments.seed_comments import GeneratedComment, IdSource, SiteComments, interleaved
from comments.seed_options import Reporter, SeededSite, SeededThread, SeedOptions, ShardResult
from shards import pg
from shards.lsn import insert_lsn
from shards.topology import get_shard_map

COMMENT_COLUMNS = ("id, tenant_id, author, author_name, body, created_at, edited_at, deleted, "
                   "score, depth, parent_id, root_id, thread_id")
VOTE_COLUMNS = "tenant_id, voter, value, created_at, comment_id"

_THREADS_SQL = """
INSERT INTO comments_thread (tenant_id, url, title, created_at, comment_count)
SELECT %(tenant)s, u.url, u.title, now(), 0
FROM unnest(%(urls)s::text[], %(titles)s::text[]) AS u(url, title)
ON CONFLICT (tenant_id, (md5(url))) DO NOTHING
"""
# Through the unique index on (tenant_id, md5(url)); the URL itself is compared too.
_THREAD_IDS_SQL = """
SELECT id, url FROM comments_thread
WHERE tenant_id = %(tenant)s AND md5(url) = ANY(SELECT md5(u) FROM unnest(%(urls)s::text[]) u)
  AND url = ANY(%(urls)s::text[])
"""
_LOCK_THREADS_SQL = "SELECT id FROM comments_thread WHERE id = ANY(%s) ORDER BY id FOR UPDATE"
_COUNT_THREADS_SQL = """
UPDATE comments_thread t SET comment_count = t.comment_count + d.n
FROM unnest(%s::bigint[], %s::int[]) AS d(id, n) WHERE t.id = d.id
"""


class ShardLoader:
    """Loads one shard's sites over the primary's direct DSN: threads, then comments in
    batches, each batch one transaction."""

    def __init__(self, shard: str, sites: list[SeededSite], options: SeedOptions,
                 reporter: Reporter, stop: threading.Event) -> None:
        self.shard = shard
        self.sites = sites
        self.options = options
        self.reporter = reporter
        self.stop = stop
        self.result = ShardResult(shard, sites=len(sites))
        self.total = sum(s.planned for s in sites)

    def run(self) -> ShardResult:
        started = time.monotonic()
        dsn = get_shard_map().shard(self.shard).primary.direct_dsn
        try:
            with pg.connect(dsn, application_name="seed_demo") as conn:
                self._threads(conn)
                self._comments(conn)
                if self.result.comments:
                    # Fresh statistics: the planner must not plan pages of a thread that just
                    # got 100,000 comments as if it had 50 (autovacuum gets there later).
                    self.reporter.status(self.shard, "ANALYZE")
                    conn.execute("ANALYZE comments_thread, comments_comment, comments_vote")
        except Exception as exc:
            self.result.error = f"{type(exc).__name__}: {exc}".strip()
        finally:
            self.result.seconds = time.monotonic() - started
            self.reporter.status(self.shard, None)
        r = self.result
        self.reporter.line(
            self.shard,
            f"{'FAILED after' if r.error else 'done:'} {r.comments:,} comments "
            f"({r.replies:,} replies), {r.votes:,} votes, {r.threads:,} threads of {r.sites} "
            f"site(s) in {r.seconds:.1f} s: {r.rows_per_second:,.0f} rows/s"
            + (f": {r.error}" if r.error else ""),
        )
        return r

    def _threads(self, conn: Any) -> None:
        k = self.options.threads_per_site
        for site in self.sites:
            urls = [f"https://{site.slug}.example/posts/{n}" for n in range(1, k + 1)]
            titles = [f"Post {n} of {site.name}" for n in range(1, k + 1)]
            with conn.transaction():
                conn.execute(_THREADS_SQL, {"tenant": site.entry.id, "urls": urls,
                                            "titles": titles})
                rows = conn.execute(
                    _THREAD_IDS_SQL, {"tenant": site.entry.id, "urls": urls}
                ).fetchall()
            by_url = dict((url, thread_id) for thread_id, url in rows)
            site.threads = [SeededThread(by_url[url], url) for url in urls]
            self.result.threads += len(urls)
        self.reporter.status(self.shard, f"{self.result.threads:,} threads ready")

    def _comments(self, conn: Any) -> None:
        ids = IdSource(conn)  # one id source for every site of the shard
        makers = [SiteComments(site, self.options) for site in self.sites]
        rounds = max(1, -(-self.total // self.options.batch))
        schedule = interleaved(makers, rounds, random.Random(f"{self.options.seed}:{self.shard}"))
        stream = (maker.comment(index, next(ids)) for maker, index in schedule)
        started = time.monotonic()
        done = 0
        while done < self.total:
            if self.stop.is_set():
                raise RuntimeError(f"interrupted after {done:,} of {self.total:,} comments "
                                   "(whole batches only: counts are right)")
            size = min(self.options.batch, self.total - done)
            ids.fill(size)
            done += self._batch(conn, itertools.islice(stream, size))
            elapsed = time.monotonic() - started
            rows = self.result.rows
            self.reporter.status(
                self.shard,
                f"{done:,}/{self.total:,} comments ({100 * done / self.total:.0f}%), "
                f"{rows / elapsed if elapsed else 0:,.0f} rows/s",
            )

    def _batch(self, conn: Any, comments: Iterator[GeneratedComment]) -> int:
        touched: dict[int, int] = {}  # thread id -> comments added
        threads: dict[int, tuple[SeededSite, SeededThread]] = {}
        votes: list[str] = []
        count = replies = n_votes = 0
        per_site: dict[int, list[int]] = {}  # site number -> [replies, votes]
        with conn.transaction(), conn.cursor() as cursor:
            with cursor.copy(f"COPY comments_comment ({COMMENT_COLUMNS}) FROM STDIN") as copy:
                chunk: list[str] = []
                for comment in comments:
                    chunk.append(comment.line)
                    if comment.votes:
                        votes.append(comment.votes)
                    tid = comment.thread.id
                    touched[tid] = touched.get(tid, 0) + 1
                    threads[tid] = (comment.site, comment.thread)
                    count += 1
                    if comment.reply or comment.n_votes:
                        counts = per_site.setdefault(comment.site.number, [0, 0])
                        counts[0] += comment.reply
                        counts[1] += comment.n_votes
                    if len(chunk) >= 1000:  # stream: the server inserts while we generate
                        copy.write("".join(chunk))
                        chunk.clear()
                if chunk:
                    copy.write("".join(chunk))
            if votes:
                with cursor.copy(f"COPY comments_vote ({VOTE_COLUMNS}) FROM STDIN") as copy:
                    for start in range(0, len(votes), 1000):
                        copy.write("".join(votes[start:start + 1000]))
            thread_ids = sorted(touched)
            cursor.execute(_LOCK_THREADS_SQL, [thread_ids])
            cursor.execute(_COUNT_THREADS_SQL,
                           [thread_ids, [touched[t] for t in thread_ids]])
        # Committed: only now do the totals count it.
        self.result.comments += count
        for tid, n in touched.items():
            site, thread = threads[tid]
            thread.added += n
            site.added += n
        for site in self.sites:
            site_replies, site_votes = per_site.get(site.number, (0, 0))
            site.replies += site_replies
            site.votes += site_votes
            replies += site_replies
            n_votes += site_votes
        self.result.replies += replies
        self.result.votes += n_votes
        self._raise_marks(conn, threads)
        return count

    def _raise_marks(self, conn: Any,
                     threads: dict[int, tuple[SeededSite, SeededThread]]) -> None:
        """Cached pages of these threads are older than the batch: make readers refill them
        from a database that has replayed it."""
        position = insert_lsn(conn)
        for tid, (site, _thread) in threads.items():
            cache.raise_mark(site.entry, tid, position)
