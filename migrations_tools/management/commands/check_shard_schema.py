"""manage.py check_shard_schema: compare the introspected schema of every shard and replica.

Exit 0 with "no drift" when every shard server shares one fingerprint (and control's replicas
match control); otherwise print the differences per database and exit 1. Reads only, over each
server's direct DSN.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_tools.drift import DriftReport, GroupReport, check_fleet
from migrations_tools.safety import parse_duration
from shards.console import render_table
from shards.topology import get_shard_map


class Command(BaseCommand):
    help = (
        "Fingerprint the schema (tables, columns, types, defaults, indexes, constraints, "
        "triggers, functions, applied migrations) of every shard primary and replica, and of "
        "control and its replicas; print the differences and exit 1 on drift."
    )
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--shard", action="append", dest="shards", metavar="NAME",
                            choices=get_shard_map().shard_names,
                            help="check only this shard (repeatable)")
        parser.add_argument("--skip-replicas", action="store_true",
                            help="fingerprint primaries only")
        parser.add_argument("--skip-control", action="store_true",
                            help="leave the control cluster out")
        parser.add_argument(
            "--replica-wait", default="10s",
            help="how long a replica may take to replay its primary's WAL before it is read "
            "(default 10s)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            replica_wait = parse_duration(options["replica_wait"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        report = check_fleet(
            shards=options["shards"],
            replicas=not options["skip_replicas"],
            control=not options["skip_control"],
            replica_wait=replica_wait,
        )
        self._print(report)
        if report.clean:
            servers = sum(len(g.members) for g in report.groups)
            self.stdout.write(self.style.SUCCESS(f"no drift: {servers} server(s) checked."))
            return
        problems = []
        if report.drifted:
            problems.append(f"schema drift on {', '.join(report.drifted)}")
        if report.unchecked:
            problems.append(
                "could not read " + ", ".join(f.alias for f in report.unchecked)
            )
        raise CommandError("; ".join(problems) + ".")

    def _print(self, report: DriftReport) -> None:
        rows = []
        for group in report.groups:
            for member in group.members:
                if member.error is not None:
                    status = f"UNREADABLE: {member.error}"
                elif group.reference is not None and member.alias == group.reference.alias:
                    status = f"reference for {group.name} ({group.reason})"
                elif member.alias in group.drift:
                    status = f"DRIFT: {len(group.drift[member.alias])} difference(s)"
                else:
                    status = "same"
                if member.note:
                    status += f"; {member.note}"
                rows.append([member.alias, member.role, member.digest, str(len(member.items)),
                             status])
        for line in render_table(["DATABASE", "ROLE", "FINGERPRINT", "OBJECTS", "STATUS"],
                                 rows):
            style = self.style.ERROR if ("DRIFT" in line or "UNREADABLE" in line) else str
            self.stdout.write(style(line))
        for group in report.groups:
            self._print_differences(group)

    def _print_differences(self, group: GroupReport) -> None:
        if not group.drift or group.reference is None:
            return
        reference = group.reference.alias
        # Servers with the same differences (a primary and its replicas) are listed together.
        grouped: dict[tuple[str, ...], list[str]] = {}
        for alias, diffs in group.drift.items():
            lines = tuple(d.describe(reference) for d in diffs)
            grouped.setdefault(lines, []).append(alias)
        self.stdout.write("")
        self.stdout.write(self.style.MIGRATE_HEADING(
            f"Differences in {group.name}, against {reference}:"
        ))
        for lines, aliases in grouped.items():
            self.stdout.write(self.style.ERROR(f"{', '.join(aliases)}:"))
            for line in lines:
                self.stdout.write(f"  {line}")
