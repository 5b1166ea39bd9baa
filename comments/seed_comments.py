"""Generated demo comments: text, reply structure, votes and COPY lines, reproducible per site.

Ids come from the shard's own generator; a comment's `created_at` is its id's millisecond, so
id order and time order agree.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from comments.models import MAX_DEPTH
from comments.seed_options import (
    REPLY_WINDOW,
    USERS_PER_SITE,
    SeededSite,
    SeededThread,
    SeedOptions,
    zipf_split,
)
from shards.global_ids import id_millis

NULL = "\\N"  # COPY text format

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
WORDS = tuple(_VOCABULARY.split())


@dataclass
class GeneratedComment:
    """One generated comment, before it is written."""

    site: SeededSite
    thread: SeededThread
    line: str
    reply: bool
    votes: str  # COPY lines of its votes
    n_votes: int


class IdSource:
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


def id_time(global_id: int) -> str:
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


class SiteComments:
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
        words = self.rng.choices(WORDS, k=self.rng.randint(4, 40))
        return " ".join(words).capitalize() + self.rng.choice((".", "!", "?", "..."))

    def comment(self, index: int, comment_id: int) -> GeneratedComment:
        site, rng, options = self.site, self.rng, self.options
        thread = site.threads[index]
        tenant = site.entry.id
        recent = self.recent.setdefault(index, deque(maxlen=REPLY_WINDOW))
        stamp = id_time(comment_id)
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
        return GeneratedComment(site, thread, line, depth > 0, votes, n_votes)


def interleaved(makers: list[SiteComments], rounds: int,
                 rng: random.Random) -> Iterator[tuple[SiteComments, int]]:
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
