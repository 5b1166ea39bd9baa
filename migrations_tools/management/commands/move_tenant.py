"""Move a tenant online to another shard: `manage.py move_tenant TENANT TARGET_SHARD`."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_tools.lock import cluster_lock
from migrations_tools.move_jobs import MoveError, MoveSettings, start_move
from migrations_tools.moves import Mover
from migrations_tools.replication import connect
from migrations_tools.tenant_rows import sharded_tables, tenant_rows
from shards.aliases import CONTROL_ALIAS
from shards.directory import lookup
from shards.errors import MalformedTenantKey, UnknownTenant
from shards.models import MoveJob
from shards.topology import get_shard_map


class Command(BaseCommand):
    help = ("Move a tenant to another shard while it keeps serving (logical replication, fence, "
            "flip, verify, cleanup). Rerun to resume a move whose command died.")

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("tenant", help="tenant slug or id")
        parser.add_argument("target", nargs="?", help="the shard to move it to")
        parser.add_argument("--abort", action="store_true",
                            help="roll the tenant's unfinished move back (it stays on its source)")
        parser.add_argument("--dry-run", action="store_true",
                            help="print the plan and sizes, change nothing")
        parser.add_argument("--grace", type=float, default=2.0,
                            help="seconds to keep the source rows after the flip (default 2)")
        parser.add_argument("--cutover-timeout", type=float, default=10.0,
                            help="longest write pause to accept: a cutover that reaches it "
                                 "lifts the fence and tries again (default 10 s)")
        parser.add_argument("--cutover-attempts", type=int, default=3,
                            help="cutovers to try before the command fails, leaving the job "
                                 "to a rerun (default 3)")
        parser.add_argument("--accept-unverified", action="store_true",
                            help="finish a move left unverified (resumed after the flip, copy "
                                 "not provable): delete the kept source rows anyway")
        parser.add_argument("--reason", default="move_tenant command")
        # Fault injection for the crash tests (a state name, or "fenced"): not for operators.
        parser.add_argument("--crash-at", help=argparse.SUPPRESS)

    def handle(self, *args: Any, **options: Any) -> None:
        try:
            entry = lookup(int(options["tenant"]) if options["tenant"].isdigit()
                           else options["tenant"])
        except (UnknownTenant, MalformedTenantKey) as exc:
            raise CommandError(f"{exc}; list tenants with shard_status --tenants") from exc
        if options["abort"]:
            self.abort(entry.id, entry.slug)
            return
        target = options["target"]
        if not target:
            raise CommandError("name the target shard (or pass --abort)")
        if target not in get_shard_map().shard_names:
            raise CommandError(f"unknown shard {target!r}; known: "
                               f"{', '.join(get_shard_map().shard_names)}")
        if options["dry_run"]:
            self.dry_run(entry, target)
            return
        settings = MoveSettings(grace_seconds=options["grace"],
                                cutover_timeout=options["cutover_timeout"],
                                cutover_attempts=max(1, options["cutover_attempts"]),
                                accept_unverified=options["accept_unverified"])
        with cluster_lock(f"move_tenant {entry.slug}") as lock:
            try:
                if options["accept_unverified"]:
                    self.check_unverified(entry.id, entry.slug)
                job = start_move(entry.id, target, reason=options["reason"])
                if job.state != MoveJob.State.PENDING:
                    self.stdout.write(f"resuming job {job.pk} at {job.state}")
                mover = Mover(job, settings=settings, progress=self.say,
                              still_locked=lock.ensure_held, crash_at=options["crash_at"])
                job = mover.run()
            except MoveError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(self.report(job)))

    @staticmethod
    def check_unverified(tenant_id: int, slug: str) -> None:
        # Accepting must follow a look at what was not verified, never precede it: the flag
        # finishes a job already unverified, and is refused for any other.
        job = MoveJob.objects.using(CONTROL_ALIAS).filter(
            tenant_id=tenant_id, state__in=MoveJob.ACTIVE_STATES).first()
        if job is None or job.state != MoveJob.State.UNVERIFIED:
            now = "no unfinished move" if job is None else f"job {job.pk} is {job.state}"
            raise MoveError(f"{slug}: {now}, not an unverified one: nothing to accept; run "
                            "the command without --accept-unverified")

    def say(self, message: str) -> None:
        self.stdout.write(f"{time.strftime('%H:%M:%S')} {message}")

    def abort(self, tenant_id: int, slug: str) -> None:
        job = MoveJob.objects.using(CONTROL_ALIAS).filter(
            tenant_id=tenant_id, state__in=MoveJob.ACTIVE_STATES).first()
        if job is None:
            raise CommandError(f"tenant {slug} has no unfinished move to abort")
        with cluster_lock(f"move_tenant --abort {slug}"):
            try:
                Mover(job, progress=self.say).abort()
            except MoveError as exc:
                raise CommandError(str(exc)) from exc
        self.stdout.write(self.style.SUCCESS(f"job {job.pk} aborted; {slug} stays on "
                                             f"{job.source}"))

    def dry_run(self, entry: Any, target: str) -> None:
        if entry.shard == target:
            raise CommandError(f"tenant {entry.slug} is already on {target}")
        tables = sharded_tables()
        shard_map = get_shard_map()
        with connect(shard_map.shard(entry.shard).primary.direct_dsn, purpose="dry-run") as src:
            rows = {t: tenant_rows(src, [t], entry.id) for t in tables}
        self.stdout.write(f"move {entry.slug} ({entry.id}) {entry.shard} -> {target}")
        for table, count in rows.items():
            self.stdout.write(f"  {table:<24} {count:>12} rows")
        self.stdout.write(f"  {'total':<24} {sum(rows.values()):>12} rows")
        self.stdout.write("plan: publication + subscription (copy), catch up, fence, flip, "
                          "verify, drop replication objects, delete source rows")

    def report(self, job: MoveJob) -> str:
        report = job.report or {}
        lines = [
            f"moved tenant {job.tenant_id}: {job.source} -> {job.target} (job {job.pk}, "
            f"{job.state})",
            f"  rows copied        {job.rows_copied}",
            f"  copy rate          {report.get('copy_rows_per_second')} rows/s",
            f"  write pause        {job.write_pause_ms} ms",
            f"  verified           {job.verified}",
            f"  total              {report.get('total_seconds')} s",
        ]
        if "verification" in report:
            lines.append("  " + json.dumps(report["verification"]["tables"]))
        return "\n".join(lines)
