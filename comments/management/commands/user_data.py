"""manage.py user_data: one person's comments on every site (data-protection requests).

    manage.py user_data --export FILE <author id>     JSON of every comment, every site
    manage.py user_data --erase <author id> [--progress FILE]

Erasure is idempotent and resumable: run it again after a kill and it finishes the same job
(its id is in the progress file) and reports every erased row once. See comments/user_data.py.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import OperationalError, connections

from comments.user_data import (
    ErasureProgress,
    UserDataError,
    default_progress_path,
    erase,
    export,
)

MAX_AUTHOR = 150


class Command(BaseCommand):
    help = ("Export (--export FILE) or erase (--erase) one author's comments on every site and "
            "shard. Erasure blanks them and reports rows per site; rerun it after a failure.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("author", help="the author id, as the sites send it")
        action = parser.add_mutually_exclusive_group(required=True)
        action.add_argument("--export", metavar="FILE", help="write the comments as JSON here")
        action.add_argument("--erase", action="store_true", help="erase the comments")
        parser.add_argument("--progress", metavar="FILE",
                            help="the erasure's progress file (default "
                                 "user_data-erase-<hash of the author>.json here); a rerun "
                                 "with the same file resumes the same job")
        # Fault injection for the crash tests: die after N rows erased. Not for operators.
        parser.add_argument("--crash-after", type=int, help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        author: str = options["author"]
        if not author or len(author) > MAX_AUTHOR:
            raise CommandError(f"the author id must be 1 to {MAX_AUTHOR} characters")
        try:
            if options["export"]:
                self.export(author, Path(options["export"]))
            else:
                path = Path(options["progress"]) if options["progress"] else \
                    default_progress_path(author)
                self.erase(author, path, options["crash_after"])
        except UserDataError as exc:
            raise CommandError(str(exc)) from exc
        except OperationalError as exc:
            raise CommandError(f"{exc}; nothing is lost: run the same command again") from exc
        finally:
            connections.close_all()

    def say(self, message: str) -> None:
        self.stdout.write(f"{time.strftime('%H:%M:%S')} {message}")

    def export(self, author: str, target: Path) -> None:
        if not target.parent.is_dir():
            raise CommandError(f"{target.parent} is not a directory: pick another --export path")
        data = export(author, say=self.say)
        temporary = target.with_name(target.name + ".tmp")
        temporary.write_text(json.dumps(data, indent=1, ensure_ascii=False))
        temporary.replace(target)
        sites = ", ".join(f"{site}: {n}" for site, n in sorted(data["sites"].items()))
        self.stdout.write(self.style.SUCCESS(
            f"exported {data['count']} comment(s) to {target}" + (f" ({sites})" if sites else "")))

    def erase(self, author: str, path: Path, crash_after: int | None) -> None:
        progress = ErasureProgress.open(path, author)
        if progress.shards_done or progress.finished:
            self.say(f"resuming erasure job {progress.job} ({path})")
        else:
            self.say(f"erasure job {progress.job}, progress in {path}")
        per_site = erase(author, progress, say=self.say, crash_after=crash_after)
        self.stdout.write("rows erased per site (this job, all its runs):")
        for site, count in per_site.items():
            self.stdout.write(f"  {site:<40} {count:>8}")
        self.stdout.write(self.style.SUCCESS(
            f"erased {sum(per_site.values())} comment(s) on {len(per_site)} site(s)"))
        self.stdout.write("REPORT " + json.dumps(per_site, sort_keys=True))
