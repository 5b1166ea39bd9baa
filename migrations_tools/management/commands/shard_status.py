"""The fleet at a glance: `manage.py shard_status [--tenants | --tenant X] [--sweep]`.

Exit status 1 when leaked replication objects are found (or a shard primary cannot be checked
for them), or a move is stuck (no command drives it, or it waits unverified for an operator),
so ops can alert on it; `--sweep` drops the leaks and exits 0 once none is left.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_tools import fleet_status, patroni_status
from migrations_tools.leaks import LeakReport, check_leaks, sweep
from migrations_tools.lock import current_holder
from migrations_tools.natural_sort import natural_key
from migrations_tools.safety import parse_duration
from shards.aliases import CONTROL_ALIAS
from shards.models import Tenant
from shards.topology import get_shard_map


def table(rows: list[list[str]], header: list[str], indent: str = "  ") -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]
    lines = [indent + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append(indent + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True))
                     .rstrip())
    return lines


class Command(BaseCommand):
    help = ("Shards with their primaries and replicas (lag), tenants, rows and sizes, moves in "
            "progress and recent, the cluster lock, and leaked replication objects (exit 1 if "
            "any; --sweep drops them).")

    # Django's system checks before the command import the URLconf and with it the whole API
    # (django-ninja): measured at ~0.9 s of the ~1.1 s the command spent past start-up, against
    # ~0.15 s for everything it reads from the servers. A status command reads; it skips them.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--tenants", action="store_true",
                            help="also list every tenant with its shard, state and rows")
        parser.add_argument("--tenant", action="append", default=[], metavar="TENANT",
                            help="only this tenant (slug or id; repeatable) in the tenant list "
                                 "and the moves")
        parser.add_argument("--sweep", action="store_true",
                            help="drop leaked replication objects (under the cluster lock)")
        parser.add_argument("--lock-wait", default="0s",
                            help="with --sweep: how long to wait for the cluster lock")

    def handle(self, *args: Any, **options: Any) -> None:
        out = self.stdout.write
        only = self.chosen_tenants(options["tenant"])
        self.servers()
        self.patroni()
        summaries = self.shards()
        if options["tenants"] or only is not None:
            self.tenants(summaries, only)
        stuck = self.moves(only)
        if options["sweep"]:
            try:
                wait = parse_duration(options["lock_wait"])
            except ValueError as exc:
                raise CommandError(str(exc)) from exc
            out("")
            out("sweeping leaked replication objects:")
            report = sweep(progress=lambda m: out(f"  {m}"), lock_wait=wait)
        else:
            report = check_leaks()
        problems = self.leaks(report, swept=options["sweep"])
        # --sweep answers for the sweep alone (exit 0 once no leak is left); the plain check
        # answers for everything, stuck moves included.
        if stuck and not options["sweep"]:
            problems.append(f"{len(stuck)} move(s) not running: " + "; ".join(
                f"job {job.pk} ({job.tenant.slug}, {job.state}): "
                f"{fleet_status.stuck_note(job)}" for job in stuck))
        if problems:
            raise CommandError("; ".join(problems), returncode=1)

    @staticmethod
    def chosen_tenants(keys: list[str]) -> set[int] | None:
        if not keys:
            return None
        chosen = set()
        for key in keys:
            found = Tenant.objects.using(CONTROL_ALIAS).filter(
                **({"id": int(key)} if key.isdigit() else {"slug": key})).first()
            if found is None:
                raise CommandError(f"no tenant {key!r}; list them with shard_status --tenants")
            chosen.add(found.id)
        return chosen

    def servers(self) -> None:
        self.stdout.write(f"servers (topology {get_shard_map().source}):")
        rows = []
        shard_map = get_shard_map()
        for s in fleet_status.check_servers():
            if not s.up:
                state = "DOWN"
            elif s.role == "replica" and not s.in_recovery and shard_map.cluster_of(
                    s.alias).patroni:
                # Under Patroni every member is listed as a replica candidate; the one that
                # leads is simply not read from.
                state = "leads (no reads)"
            elif s.role == "replica":
                state = "streaming" if s.in_recovery else "NOT IN RECOVERY"
            else:
                state = "up"
            leads = state == "leads (no reads)"
            rows.append([s.alias, s.role, s.cluster, state, "-" if leads else s.describe_lag(),
                         fleet_status.human_bytes(s.behind_bytes)
                         if s.role == "replica" and not leads else "-", s.error])
        for line in table(rows, ["SERVER", "ROLE", "CLUSTER", "STATE", "LAG", "BEHIND",
                                 "ERROR"]):
            self.stdout.write(line)

    def patroni(self) -> None:
        roles = patroni_status.managed(get_shard_map())
        if not roles:
            return
        out = self.stdout.write
        out("")
        out("patroni (each member's role now):")
        for line in table(patroni_status.member_rows(roles),
                          ["CLUSTER", "MEMBER", "ROLE", "STATE", "TIMELINE", "LAG", "ERROR"]):
            out(line)
        history = patroni_status.history_rows(roles)
        out("")
        out(f"failovers (Patroni's history, last {patroni_status.HISTORY_SHOWN} per cluster):")
        if not history:
            out("  none")
        for line in table(history, ["CLUSTER", "ENDED TIMELINE", "AT LSN", "WHEN", "NEW LEADER",
                                    "REASON"]) if history else []:
            out(line)

    def shards(self) -> list[fleet_status.ShardSummary]:
        summaries = fleet_status.summarize_shards()
        self.stdout.write("")
        self.stdout.write("shards:")
        rows = []
        for s in summaries:
            accepts = {True: "yes", False: "no", None: "unregistered"}[s.accepts_tenants]
            rows.append([
                s.name, accepts, s.name, ", ".join(s.replicas) or "none", str(s.tenants),
                "?" if s.error else str(s.rows), "?" if s.error else fleet_status.human_bytes(
                    s.size_bytes),
                "?" if s.error else str(s.stray_rows), s.error,
            ])
        for line in table(rows, ["SHARD", "OPEN", "PRIMARY", "REPLICAS", "TENANTS", "ROWS",
                                 "SIZE", "STRAY ROWS", "ERROR"]):
            self.stdout.write(line)
        if any(s.stray_rows for s in summaries):
            self.stdout.write("  (stray rows: rows of tenants placed on another shard: a move's "
                              "copy in progress, or source rows awaiting cleanup)")
        return summaries

    def tenants(self, summaries: list[fleet_status.ShardSummary],
                only: set[int] | None) -> None:
        rows_of = {s.name: s for s in summaries}
        rows = []
        tenants = Tenant.objects.using(CONTROL_ALIAS).all()
        if only is not None:
            tenants = tenants.filter(id__in=only)
        for t in sorted(tenants, key=lambda t: (natural_key(t.shard), natural_key(t.slug))):
            summary = rows_of.get(t.shard)
            count = size = "?"
            if summary is not None and not summary.error:
                count = str(summary.rows_by_tenant.get(t.id, 0))
                size = str(summary.bytes_by_tenant.get(t.id, 0))
            rows.append([t.slug, str(t.id), t.shard, t.state, str(t.version), count, size])
        self.stdout.write("")
        self.stdout.write(f"tenants ({len(rows)}):")
        for line in table(rows, ["TENANT", "ID", "SHARD", "STATE", "VERSION", "ROWS",
                                 "BYTES"]):
            self.stdout.write(line)

    def moves(self, only: set[int] | None) -> list[Any]:
        """Print the moves; return those stuck (no command drives them)."""
        out = self.stdout.write
        # Jobs first, then the lock: a mover takes the lock before it creates its job, so a
        # move that starts in between is never mistaken for a stuck one.
        active, recent = fleet_status.moves(only)
        holder = current_holder()
        stuck = []
        out("")
        if active:
            out(f"moves in progress ({len(active)}):")
            rows = []
            for job in active:
                running = fleet_status.mover_running(job, holder)
                if not running:
                    stuck.append(job)
                note = "running" if running else fleet_status.stuck_note(job)
                rows.append([str(job.pk), job.tenant.slug, f"{job.source} -> {job.target}",
                             job.state, fleet_status.progress_text(job),
                             fleet_status.human_bytes(job.lag_bytes),
                             fleet_status.ago(job.updated_at),
                             note])
            for line in table(rows, ["JOB", "TENANT", "MOVE", "STATE", "PROGRESS", "LAG",
                                     "UPDATED", "NOTE"]):
                out(line)
        else:
            out("moves in progress: none")
        if recent:
            out(f"recent moves (last {len(recent)}):")
            rows = []
            for job in recent:
                pause = "-" if job.write_pause_ms is None else f"{job.write_pause_ms:.1f} ms"
                verified = {True: "yes", False: "NO", None: "-"}[job.verified]
                rows.append([str(job.pk), job.tenant.slug, f"{job.source} -> {job.target}",
                             job.state, pause, verified, fleet_status.ago(job.finished_at
                                                                    or job.updated_at),
                             job.reason, job.error[:80]])
            for line in table(rows, ["JOB", "TENANT", "MOVE", "STATE", "WRITE PAUSE",
                                     "VERIFIED", "FINISHED", "REASON", "ERROR"]):
                out(line)
        else:
            out("recent moves: none")
        out(f"cluster lock: {'held by ' + holder.describe() if holder else 'free'}")
        return stuck

    def leaks(self, report: LeakReport, *, swept: bool) -> list[str]:
        out = self.stdout.write
        out("")
        for shard, error in sorted(report.unchecked.items()):
            out(f"leaked replication objects on {shard}: NOT CHECKED ({error})")
        if not report.leaks:
            out("leaked replication objects: none")
        else:
            out(f"leaked replication objects ({len(report.leaks)}):")
            rows = [[leak.shard, leak.kind, leak.name, leak.detail] for leak in report.leaks]
            for line in table(rows, ["SHARD", "KIND", "NAME", "DETAIL"]):
                out(line)
            out("  a leaked slot keeps WAL on its server until it is dropped. Fix: "
                "`manage.py shard_status --sweep` drops them (under the cluster lock); objects "
                "of an unfinished move are not leaks: `move_tenant <tenant> --abort` removes "
                "those")
        problems = []
        if report.leaks:
            problems.append(f"{len(report.leaks)} leaked replication object(s)"
                            + (" left after the sweep" if swept else "") + ": "
                            + ", ".join(leak.describe() for leak in report.leaks))
        if report.unchecked:
            problems.append("could not check " + ", ".join(sorted(report.unchecked))
                            + " for leaked replication objects")
        return problems
