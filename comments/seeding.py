"""Demo data: N sites and M comments, skewed like real traffic, bulk-loaded per shard.

`manage.py seed_demo` is a thin shell over `seed()`. What it makes:

- sites `<prefix>-1` ... `<prefix>-N`, created through `sites.service.create_site` (placement
  policy, hashed API key shown once); a site that already exists is reused, so running the
  command again adds data to the same sites;
- K threads per site (`https://<slug>.example/posts/<k>`, reused when they exist);
- M comments split over the sites by a Zipf law (site i gets a share proportional to
  1 / i**s: a few sites get most), and within a site over its threads by the same law;
  a share of them are replies to an earlier comment of the same thread (parent, root and depth
  consistent, at most MAX_DEPTH deep); some get votes from distinct users, and each comment's
  score is the sum of its votes. Comments of all threads of a shard are interleaved, as if they
  had arrived over time, so a hot thread's newest comments are among the shard's newest ids.

Loading never goes through the API or the ORM: each shard primary is loaded over its direct
DSN with COPY, one transaction per batch, one thread per shard in parallel. Ids come from the
shard's own generator (`SELECT shardsvc_next_id() FROM generate_series(1, n)`), so they are
global, time-ordered and the same kind the service makes; `created_at` is the id's timestamp, so
"newest first" by id and by time agree. Each batch raises `comment_count` of the threads it
touched in the same transaction as its rows (threads locked in id order), so an interrupted or
failed run leaves only whole batches and every count right. After each batch the touched
threads' cache marks are raised, so cached pages never hide seeded comments.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from comments.models import MAX_DEPTH
from shards.aliases import CONTROL_ALIAS
from shards.directory import SLUG_RE, TenantEntry
from shards.global_ids import id_millis
from shards.lsn import insert_lsn

MAX_SITES = 100_000
MAX_COMMENTS = 100_000_000
MAX_THREADS_PER_SITE = 100_000
USERS_PER_SITE = 500
# Replies pick their parent among this many latest comments of the thread.
REPLY_WINDOW = 64

# A plain vocabulary: nothing in it that COPY's text format would need to escape.
_VOCABULARY = """
the a of and to in is it that this was for on with as be at by not but what all were we
when your can said there use an each which she do how their if will up other about out
many then them these so some her would make like him into time has look two more write go
see number no way could people my than first water been call who oil its now find long
down day did get come made may part great post thread reply agree think article point
really good idea thanks interesting source link wrong right question answer data shard
replica latency cache query index table database server request tenant django python
postgres
"""
_WORDS = tuple(_VOCABULARY.split())


class SeedError(ValueError):
    """Bad options or a state the seeder refuses to touch; the message says what to do."""


@dataclass(frozen=True)
class SeedOptions:
    sites: int
    comments: int
    threads_per_site: int = 20
    zipf: float = 1.1
    seed: int = 42
    prefix: str = "demo"
    reply_share: float = 0.3
    votes_per_comment: float = 0.5
    batch: int = 20_000
    jobs: int = 0  # shards loaded at once; 0 = all of them

    def check(self) -> None:
        if not 1 <= self.sites <= MAX_SITES:
            raise SeedError(f"--sites must be between 1 and {MAX_SITES:,}, got {self.sites}")
        if not 0 <= self.comments <= MAX_COMMENTS:
            raise SeedError(
                f"--comments must be between 0 and {MAX_COMMENTS:,}, got {self.comments}"
            )
        if not 1 <= self.threads_per_site <= MAX_THREADS_PER_SITE:
            raise SeedError(f"--threads-per-site must be between 1 and "
                            f"{MAX_THREADS_PER_SITE:,}, got {self.threads_per_site}")
        if not 0 <= self.zipf <= 10:
            raise SeedError(f"--zipf must be between 0 (uniform) and 10, got {self.zipf}")
        if not 0 <= self.reply_share <= 1:
            raise SeedError(f"--replies must be a share between 0 and 1, got {self.reply_share}")
        if not 0 <= self.votes_per_comment <= 50:
            raise SeedError(
                f"--votes must be between 0 and 50 per comment, got {self.votes_per_comment}"
            )
        if not 100 <= self.batch <= 1_000_000:
            raise SeedError(f"--batch must be between 100 and 1,000,000, got {self.batch}")
        if self.jobs < 0:
            raise SeedError(f"--jobs must be 0 (all shards) or more, got {self.jobs}")
        last = site_slug(self.prefix, self.sites)
        if not SLUG_RE.match(self.prefix) or not SLUG_RE.match(last):
            raise SeedError(
                f"--prefix {self.prefix!r} does not make valid site slugs (e.g. {last!r}): use "
                "lowercase letters, digits and inner hyphens, at most 63 characters in all"
            )


def site_slug(prefix: str, number: int) -> str:
    return f"{prefix}-{number}"


def zipf_split(total: int, parts: int, exponent: float) -> list[int]:
    """`total` split into `parts` shares proportional to 1 / rank**exponent, largest first,
    summing exactly to `total` (largest remainder rounding)."""
    weights = [1.0 / (rank ** exponent) for rank in range(1, parts + 1)]
    scale = total / sum(weights)
    exact = [w * scale for w in weights]
    shares = [int(x) for x in exact]
    short = total - sum(shares)
    by_remainder = sorted(range(parts), key=lambda i: (exact[i] - shares[i], -i), reverse=True)
    for i in by_remainder[:short]:
        shares[i] += 1
    return shares


# ----- results ---------------------------------------------------------------------------------


@dataclass
class SeededThread:
    id: int
    url: str
    added: int = 0  # comments this run added


@dataclass
class SeededSite:
    number: int
    entry: TenantEntry
    name: str
    api_key: str | None  # None for a site that existed before this run (keys are shown once)
    planned: int  # comments this run adds
    threads: list[SeededThread] = field(default_factory=list)
    added: int = 0
    replies: int = 0
    votes: int = 0

    @property
    def slug(self) -> str:
        return self.entry.slug

    @property
    def shard(self) -> str:
        return self.entry.shard

    def as_json(self) -> dict[str, Any]:
        return {
            "slug": self.slug, "name": self.name, "shard": self.shard,
            "tenant_id": self.entry.id, "api_key": self.api_key, "created": bool(self.api_key),
            "comments": self.added, "replies": self.replies, "votes": self.votes,
            "threads": [{"id": t.id, "url": t.url, "comments": t.added} for t in self.threads],
        }


@dataclass
class ShardResult:
    shard: str
    sites: int = 0
    threads: int = 0
    comments: int = 0
    replies: int = 0
    votes: int = 0
    seconds: float = 0.0
    error: str | None = None

    @property
    def rows(self) -> int:
        return self.comments + self.votes

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


@dataclass
class SeedResult:
    sites: list[SeededSite]
    shards: list[ShardResult]
    seconds: float

    @property
    def failed(self) -> list[ShardResult]:
        return [s for s in self.shards if s.error]


class Reporter(Protocol):
    def line(self, shard: str, text: str) -> None: ...
    def status(self, shard: str, text: str | None) -> None: ...


class _Quiet:
    def line(self, shard: str, text: str) -> None:
        pass

    def status(self, shard: str, text: str | None) -> None:
        pass


# ----- sites (control database) ----------------------------------------------------------------


def ensure_sites(options: SeedOptions, echo: Callable[[str], None] = print, *,
                 into: list[SeededSite] | None = None) -> list[SeededSite]:
    """Create the sites that do not exist yet (placement policy, new key), reuse the others.

    Sites are appended to `into` as they are made, so a caller still holds the keys of the
    sites created before a failure (keys are shown once)."""
    from shards.models import Tenant
    from sites.models import Site
    from sites.service import SiteExists, create_site

    plan = zipf_split(options.comments, options.sites, options.zipf)
    slugs = [site_slug(options.prefix, n) for n in range(1, options.sites + 1)]
    existing = {
        row.slug: row for row in Tenant.objects.using(CONTROL_ALIAS).filter(slug__in=slugs)
    }
    names = dict(
        Site.objects.using(CONTROL_ALIAS).filter(tenant__slug__in=slugs)
        .values_list("tenant__slug", "name")
    )
    moving = sorted(slug for slug, row in existing.items() if row.state != Tenant.State.ACTIVE)
    if moving:
        raise SeedError(f"site(s) {', '.join(moving)} are being moved between shards: seed "
                        "again when the move is done, or use another --prefix")
    sites = into if into is not None else []
    created = 0
    for number, slug in enumerate(slugs, 1):
        if slug in existing:
            row = existing[slug]
            sites.append(SeededSite(number, TenantEntry.from_model(row), names.get(slug, slug),
                                    None, plan[number - 1]))
            continue
        name = f"Demo site {number}" if options.prefix == "demo" else f"{slug} (demo)"
        try:
            new = create_site(slug, name)
        except SiteExists:  # another run made it a moment ago
            row = Tenant.objects.using(CONTROL_ALIAS).get(slug=slug)
            sites.append(SeededSite(number, TenantEntry.from_model(row), name, None,
                                    plan[number - 1]))
            continue
        created += 1
        sites.append(SeededSite(number, new.entry, name, new.api_key, plan[number - 1]))
    echo(f"sites: {created} created, {len(sites) - created} reused "
         f"({', '.join(f'{s}: {n}' for s, n in _count_by_shard(sites).items())})")
    return sites


def _count_by_shard(sites: list[SeededSite]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for site in sites:
        counts[site.shard] = counts.get(site.shard, 0) + 1
    return dict(sorted(counts.items()))


# ----- one shard -------------------------------------------------------------------------------

COMMENT_COLUMNS = ("id, tenant_id, author, author_name, body, created_at, edited_at, deleted, "
                   "score, depth, parent_id, root_id, thread_id")
VOTE_COLUMNS = "tenant_id, voter, value, created_at, comment_id"
NULL = "\\N"  # COPY text format

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


@dataclass
class _Comment:
    """One generated comment, before it is written."""

    site: SeededSite
    thread: SeededThread
    line: str
    reply: bool
    votes: str  # COPY lines of its votes
    n_votes: int


class _Ids:
    """Global ids from the shard's generator, fetched in batches, handed out ascending."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.queue: deque[int] = deque()

    def fill(self, count: int) -> None:
        fetched: set[int] = set()
        for _attempt in range(5):
            rows = self.conn.execute(
                "SELECT shardsvc_next_id() FROM generate_series(1, %s)", [count - len(fetched)]
            ).fetchall()
            fetched.update(row[0] for row in rows)
            # More than 1024 ids in one millisecond would repeat: ask again for the missing ones.
            if len(fetched) == count:
                break
        else:
            raise RuntimeError("the shard's id generator repeated ids: more than 1024 ids per "
                               "millisecond; lower --batch or run fewer seeders at once")
        self.queue.extend(sorted(fetched))

    def __next__(self) -> int:
        return self.queue.popleft()


_timestamps: dict[int, str] = {}


def _id_time(global_id: int) -> str:
    """The id's own millisecond, as COPY text: created_at agrees with id order."""
    millis = id_millis(global_id)
    text = _timestamps.get(millis)
    if text is None:
        if len(_timestamps) > 100_000:
            _timestamps.clear()
        text = datetime.fromtimestamp(millis / 1000, tz=UTC).isoformat(
            sep=" ", timespec="milliseconds")
        _timestamps[millis] = text
    return text


class _SiteComments:
    """Makes the comments of one site, one at a time for a given thread; reproducible from
    (seed, slug)."""

    def __init__(self, site: SeededSite, options: SeedOptions) -> None:
        self.site = site
        self.options = options
        self.rng = random.Random(f"{options.seed}:{site.slug}")
        self.bodies = [self._sentence() for _ in range(512)]
        # Zipf over the threads too, with the hot one shuffled so it is not always posts/1.
        shares = zipf_split(site.planned, len(site.threads), options.zipf)
        order = list(range(len(site.threads)))
        self.rng.shuffle(order)
        self.per_thread = [0] * len(site.threads)
        for share, index in zip(shares, order, strict=True):
            self.per_thread[index] = share
        # Per thread, its latest comments (id, root, depth): replies pick their parent here.
        self.recent: dict[int, deque[tuple[int, int, int]]] = {}

    def _sentence(self) -> str:
        # Only plain words, spaces and punctuation: nothing COPY's text format must escape.
        words = self.rng.choices(_WORDS, k=self.rng.randint(4, 40))
        return " ".join(words).capitalize() + self.rng.choice((".", "!", "?", "..."))

    def comment(self, index: int, comment_id: int) -> _Comment:
        site, rng, options = self.site, self.rng, self.options
        thread = site.threads[index]
        tenant = site.entry.id
        recent = self.recent.setdefault(index, deque(maxlen=REPLY_WINDOW))
        stamp = _id_time(comment_id)
        user = rng.randrange(USERS_PER_SITE)
        parent_id = root_id = None
        depth = 0
        if recent and rng.random() < options.reply_share:
            parent, parent_root, parent_depth = rng.choice(recent)
            if parent_depth < MAX_DEPTH:
                parent_id, root_id, depth = parent, parent_root or parent, parent_depth + 1
        recent.append((comment_id, root_id or 0, depth))
        votes = ""
        score = n_votes = 0
        if options.votes_per_comment:
            n_votes = min(int(rng.expovariate(1.0 / options.votes_per_comment) + 0.5),
                          USERS_PER_SITE)
            if n_votes:
                lines = []
                for voter in rng.sample(range(USERS_PER_SITE), n_votes):
                    value = 1 if rng.random() < 0.8 else -1
                    score += value
                    lines.append(f"{tenant}\tuser-{voter}\t{value}\t{stamp}\t{comment_id}\n")
                votes = "".join(lines)
        parent_text = str(parent_id) if parent_id else NULL
        root_text = str(root_id) if root_id else NULL
        line = (
            f"{comment_id}\t{tenant}\tuser-{user}\tUser {user}\t{rng.choice(self.bodies)}"
            f"\t{stamp}\t{NULL}\tf\t{score}\t{depth}\t{parent_text}\t{root_text}"
            f"\t{thread.id}\n"
        )
        return _Comment(site, thread, line, depth > 0, votes, n_votes)


def _interleaved(makers: list[_SiteComments], rounds: int,
                 rng: random.Random) -> Iterator[tuple[_SiteComments, int]]:
    """(site, thread index) of every comment to make, interleaved like comments arriving over
    time: in each of `rounds` rounds every thread gets its share of its count, in random order.
    So a hot thread's newest comments sit among the newest ids of the shard, as in real life,
    not in one block of ids; memory stays one round."""
    slots = [(maker, index, count) for maker in makers
             for index, count in enumerate(maker.per_thread) if count]
    for r in range(rounds):
        order: list[int] = []
        for slot, (_maker, _index, count) in enumerate(slots):
            order.extend([slot] * (count * (r + 1) // rounds - count * r // rounds))
        rng.shuffle(order)
        for slot in order:
            yield slots[slot][0], slots[slot][1]


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
        from shards import pg
        from shards.topology import get_shard_map

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
        ids = _Ids(conn)  # one id source for every site of the shard
        makers = [_SiteComments(site, self.options) for site in self.sites]
        rounds = max(1, -(-self.total // self.options.batch))
        schedule = _interleaved(makers, rounds, random.Random(f"{self.options.seed}:{self.shard}"))
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

    def _batch(self, conn: Any, comments: Iterator[_Comment]) -> int:
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
        from comments import cache

        position = insert_lsn(conn)
        for tid, (site, _thread) in threads.items():
            cache.raise_mark(site.entry, tid, position)


# ----- the whole run ---------------------------------------------------------------------------


def load_sites(sites: list[SeededSite], options: SeedOptions, *,
               reporter: Reporter | None = None,
               stop: threading.Event | None = None) -> SeedResult:
    """Load every shard's sites, shards in parallel (`options.jobs` at a time). A shard that
    fails is reported in its ShardResult; the others finish."""
    from concurrent.futures import ThreadPoolExecutor

    started = time.monotonic()
    by_shard: dict[str, list[SeededSite]] = {}
    for site in sites:
        by_shard.setdefault(site.shard, []).append(site)
    reporter = reporter or _Quiet()
    stop = stop or threading.Event()
    loaders = [ShardLoader(shard, group, options, reporter, stop)
               for shard, group in sorted(by_shard.items())]
    jobs = max(1, min(options.jobs or len(loaders), len(loaders)))
    with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="seed") as pool:
        try:
            results = list(pool.map(ShardLoader.run, loaders))
        except BaseException:  # Ctrl-C: loaders stop after their current batch commits
            stop.set()
            raise
    return SeedResult(sites=sites, shards=results, seconds=time.monotonic() - started)


def seed(options: SeedOptions, *, reporter: Reporter | None = None,
         echo: Callable[[str], None] = print) -> SeedResult:
    """Both steps: create or reuse the sites, then load them. Bad options raise SeedError."""
    options.check()
    return load_sites(ensure_sites(options, echo), options, reporter=reporter)
