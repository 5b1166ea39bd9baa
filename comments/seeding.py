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

Here: the sites and the whole run. The options and results are in `seed_options`, the generated
comments in `seed_comments`, one shard's load in `seed_loader`.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from comments.seed_loader import ShardLoader
from comments.seed_options import (
    QuietReporter,
    Reporter,
    SeededSite,
    SeedError,
    SeedOptions,
    SeedResult,
    site_slug,
    zipf_split,
)
from shards.aliases import CONTROL_ALIAS
from shards.directory import TenantEntry
from shards.models import Tenant
from sites.models import Site
from sites.service import SiteExists, create_site

# ----- sites (control database) ----------------------------------------------------------------


def ensure_sites(options: SeedOptions, echo: Callable[[str], None] = print, *,
                 into: list[SeededSite] | None = None) -> list[SeededSite]:
    """Create the sites that do not exist yet (placement policy, new key), reuse the others.

    Sites are appended to `into` as they are made, so a caller still holds the keys of the
    sites created before a failure (keys are shown once)."""
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


# ----- the whole run ---------------------------------------------------------------------------


def load_sites(sites: list[SeededSite], options: SeedOptions, *,
               reporter: Reporter | None = None,
               stop: threading.Event | None = None) -> SeedResult:
    """Load every shard's sites, shards in parallel (`options.jobs` at a time). A shard that
    fails is reported in its ShardResult; the others finish."""
    started = time.monotonic()
    by_shard: dict[str, list[SeededSite]] = {}
    for site in sites:
        by_shard.setdefault(site.shard, []).append(site)
    reporter = reporter or QuietReporter()
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
