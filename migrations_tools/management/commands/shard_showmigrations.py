"""manage.py shard_showmigrations: a matrix of migrations x databases, drift highlighted.

Informational: exits 0 whatever it finds (use `migrate_shards --check` as a gate).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from migrations_tools.plans import default_jobs, selected_aliases
from migrations_tools.status import matrix
from shards.console import render_table
from shards.topology import get_shard_map

# Past this many databases a matrix no longer fits a terminal: list each migration instead.
MAX_COLUMNS = 12


class Command(BaseCommand):
    help = (
        "Show which migration is applied on which primary (control and shards) as a matrix, "
        "with drift (applied on some databases, not on others) highlighted."
    )
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("app_label", nargs="*", help="only these apps")
        parser.add_argument("--shard", action="append", dest="shards", metavar="NAME",
                            choices=get_shard_map().shard_names,
                            help="only this shard (repeatable); control is always shown")
        parser.add_argument("--list", action="store_true",
                            help="one line per migration instead of a matrix")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = selected_aliases(options["shards"])
        states, rows = matrix(aliases, jobs=default_jobs(len(aliases)),
                              apps=options["app_label"] or None)
        for state in states:
            if state.error is not None:
                self.stderr.write(f"{state.alias}: could not be read: {state.error}")
        if options["list"] or len(aliases) > MAX_COLUMNS:
            for row in rows:
                applied = [a for a, c in row.cells.items() if c == "X"]
                relevant = [a for a, c in row.cells.items() if c in "X."]
                line = f"{row.label}: applied on {len(applied)}/{len(relevant)}"
                self.stdout.write(self._style(row.drift, f"{line}  DRIFT: {row.drift}"
                                              if row.drift else line))
        else:
            table = render_table(
                ["MIGRATION", *aliases, ""],
                [[row.label, *(row.cells[a] for a in aliases),
                  f"DRIFT: {row.drift}" if row.drift else ""] for row in rows],
            )
            self.stdout.write(table[0])
            for row, line in zip(rows, table[1:], strict=True):
                self.stdout.write(self._style(row.drift, line))
            self.stdout.write(
                "X applied, . not applied, - not for this database (its app lives elsewhere; "
                "Django records it as a no-op), ? unreadable"
            )
        drifted = [row.label for row in rows if row.drift]
        if drifted:
            self.stdout.write(self.style.ERROR(
                f"{len(drifted)} migration(s) differ across databases: {', '.join(drifted)}. "
                "Run migrate_shards to finish them."
            ))
        else:
            self.stdout.write(self.style.SUCCESS("No drift: every database has the same "
                                                 "migrations applied."))

    def _style(self, drift: str, line: str) -> str:
        return self.style.ERROR(line) if drift else line
