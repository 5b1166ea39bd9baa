"""What a demo seed run is asked for (SeedOptions, checked) and what it reports (SeedResult).

Used by `comments.seeding` (the run), `comments.seed_loader` (one shard) and `seed_demo`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from shards.directory import SLUG_RE, TenantEntry

MAX_SITES = 100_000
MAX_COMMENTS = 100_000_000
MAX_THREADS_PER_SITE = 100_000
USERS_PER_SITE = 500
# Replies pick their parent among this many latest comments of the thread.
REPLY_WINDOW = 64


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


class QuietReporter:
    def line(self, shard: str, text: str) -> None:
        pass

    def status(self, shard: str, text: str | None) -> None:
        pass
