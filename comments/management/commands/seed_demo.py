"""manage.py seed_demo: demo sites and a skewed pile of comments, bulk-loaded per shard.

    manage.py seed_demo --sites 50 --comments 1000000 [--threads-per-site 20] [--zipf 1.1]
                        [--seed 42] [--keys-out keys.json]

Sites `demo-1` ... `demo-N` are created through the placement policy (existing ones are reused:
running it again adds comments to the same sites and threads). Comments follow a Zipf law over
sites and threads; each shard primary is loaded over its direct DSN with COPY, shards in
parallel, one transaction per batch, so thread comment counts are right at every commit.
See comments/seeding.py.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from comments.seed_options import SeededSite, SeedError, SeedOptions, SeedResult
from comments.seeding import ensure_sites, load_sites
from shards.console import Console, render_table


class Command(BaseCommand):
    help = (
        "Create N demo sites and M comments with a Zipf-like skew over sites and threads, "
        "with replies and votes, bulk-loaded per shard with COPY (shards in parallel)."
    )
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--sites", type=int, required=True, help="number of sites (N)")
        parser.add_argument("--comments", type=int, required=True,
                            help="comments to add over all sites (M)")
        parser.add_argument("--threads-per-site", type=int, default=20,
                            help="threads (pages) per site (default 20)")
        parser.add_argument("--zipf", type=float, default=1.1,
                            help="skew exponent s: rank r gets a share ~ 1/r**s; 0 = uniform "
                            "(default 1.1)")
        parser.add_argument("--seed", type=int, default=42,
                            help="random seed: the same seed makes the same shape (default 42)")
        parser.add_argument("--prefix", default="demo",
                            help="site slugs are <prefix>-1 ... <prefix>-N (default demo)")
        parser.add_argument("--replies", type=float, default=0.3, dest="reply_share",
                            help="share of comments that reply to an earlier one (default 0.3)")
        parser.add_argument("--votes", type=float, default=0.5, dest="votes_per_comment",
                            help="mean votes per comment (default 0.5)")
        parser.add_argument("--batch", type=int, default=20_000,
                            help="comments per COPY transaction (default 20000)")
        parser.add_argument("--jobs", type=int, default=0,
                            help="shards loaded at once (default: all)")
        parser.add_argument("--keys-out", metavar="FILE",
                            help="write every site's slug, shard, API key and thread ids to this "
                            "JSON file (mode 600) instead of printing the keys")

    def handle(self, *args: Any, **opts: Any) -> None:
        try:
            options = SeedOptions(
                sites=opts["sites"], comments=opts["comments"],
                threads_per_site=opts["threads_per_site"], zipf=opts["zipf"], seed=opts["seed"],
                prefix=opts["prefix"], reply_share=opts["reply_share"],
                votes_per_comment=opts["votes_per_comment"], batch=opts["batch"],
                jobs=opts["jobs"],
            )
            options.check()
        except SeedError as exc:
            raise CommandError(str(exc)) from None
        keys_out = Path(opts["keys_out"]) if opts["keys_out"] else None
        if keys_out is not None:
            _check_writable(keys_out)

        sites: list[SeededSite] = []
        result: SeedResult | None = None
        try:
            ensure_sites(options, self.stdout.write, into=sites)
            console = Console(self.stdout, sorted({s.shard for s in sites}), heartbeat=5.0)
            with console.running():
                result = load_sites(sites, options, reporter=console)
        except SeedError as exc:
            raise CommandError(str(exc)) from None
        except KeyboardInterrupt:
            raise CommandError("interrupted: every committed batch is whole and every count "
                               "right; run the command again to add more") from None
        finally:
            # Keys are shown once: whatever happened, never lose the ones already made.
            self._report_sites(sites, keys_out)
        self._report_shards(result)
        if result.failed:
            raise CommandError(
                "seeding failed on " + "; ".join(f"{s.shard}: {s.error}" for s in result.failed)
                + ". Committed batches are whole and counts are right: fix the cause and run "
                "the command again to add the rest."
            )

    def _report_sites(self, sites: list[SeededSite], keys_out: Path | None) -> None:
        if not sites:
            return
        if keys_out is not None:
            _write_keys(keys_out, sites)
        headers = ["SITE", "SHARD", "THREADS", "COMMENTS", "REPLIES", "VOTES"]
        if keys_out is None:
            headers.append("API KEY")
        rows = []
        for site in sites:
            row = [site.slug, site.shard, str(len(site.threads)), f"{site.added:,}",
                   f"{site.replies:,}", f"{site.votes:,}"]
            if keys_out is None:
                row.append(site.api_key or "(existing site: key shown when it was created)")
            rows.append(row)
        self.stdout.write("")
        for line in render_table(headers, rows):
            self.stdout.write(line)
        if keys_out is not None:
            self.stdout.write(f"API keys and thread ids: {keys_out}")

    def _report_shards(self, result: SeedResult) -> None:
        rows = [[s.shard, str(s.sites), f"{s.threads:,}", f"{s.comments:,}", f"{s.replies:,}",
                 f"{s.votes:,}", f"{s.seconds:.1f}", f"{s.rows_per_second:,.0f}",
                 "FAILED" if s.error else "ok"] for s in result.shards]
        comments = sum(s.comments for s in result.shards)
        votes = sum(s.votes for s in result.shards)
        self.stdout.write("")
        for line in render_table(["SHARD", "SITES", "THREADS", "COMMENTS", "REPLIES", "VOTES",
                                  "SECONDS", "ROWS/S", "RESULT"], rows):
            self.stdout.write(line)
        rate = (comments + votes) / result.seconds if result.seconds else 0.0
        self.stdout.write(
            f"Seeded {comments:,} comments and {votes:,} votes into {len(result.sites)} sites on "
            f"{len(result.shards)} shard(s) in {result.seconds:.1f} s ({rate:,.0f} rows/s, "
            f"{comments / result.seconds if result.seconds else 0:,.0f} comments/s)."
        )


def _check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise CommandError(f"--keys-out {path} is a folder: give a file name")
    if not folder.is_dir():
        raise CommandError(f"--keys-out: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise CommandError(f"--keys-out: cannot write {path}")


def _write_keys(path: Path, sites: list[SeededSite]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump({"sites": [s.as_json() for s in sites]}, handle, indent=1)
        handle.write("\n")
    tmp.replace(path)
