"""manage.py migrate_shards: migrate the control database, then every shard primary in parallel.

    manage.py migrate_shards                      # everything; exit 0 only if all is migrated
    manage.py migrate_shards --shard shard_3      # control, then only shard_3
    manage.py migrate_shards --plan [--lint]      # what would run where; nothing changes
    manage.py migrate_shards --check              # exit 1 if anything is unapplied (deploy gate)

Connections are direct (the topology's direct_dsn), never through PgBouncer, whatever
SHARDSVC_DIRECT_DB says: the cluster lock and the timeouts are session state.
"""

from __future__ import annotations

from collections import defaultdict
from importlib import import_module
from typing import Any

import psycopg
from django.apps import apps
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils.module_loading import module_has_submodule

from migrations_tools.lint import Finding
from migrations_tools.lock import cluster_lock
from migrations_tools.plans import (
    DatabasePlan,
    default_jobs,
    describe_plan,
    outstanding,
    plan_fleet,
    policy_from_options,
    selected_aliases,
)
from migrations_tools.runner import DatabaseResult, FleetResult, migrate_fleet
from migrations_tools.safety import ExecutionPolicy, parse_duration
from shards.console import Console, render_table
from shards.topology import get_shard_map

_DEFAULTS = ExecutionPolicy()


class Command(BaseCommand):
    help = (
        "Migrate the control database, then every shard primary in parallel (replicas follow "
        "their primaries). Takes the cluster lock; each migration runs with lock_timeout and "
        "statement_timeout and is retried when it cannot take its locks."
    )
    requires_migrations_checks = False

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--shard", action="append", dest="shards", metavar="NAME",
            choices=get_shard_map().shard_names,
            help="migrate only this shard (repeatable); control is always migrated first",
        )
        parser.add_argument(
            "--jobs", type=int,
            help="shards migrated at the same time (default: the number of selected shards, "
            "at most 16)",
        )
        parser.add_argument("--plan", action="store_true",
                            help="print what would run on each database; change nothing")
        parser.add_argument("--check", action="store_true",
                            help="exit 1 if any selected database has unapplied migrations")
        parser.add_argument(
            "--lint", action="store_true",
            help="flag operations unsafe on large live tables in the pending migrations; "
            "with it, migrate_shards refuses to run while any is flagged",
        )
        parser.add_argument("--fail-fast", action="store_true",
                            help="stop starting migrations once one database failed")
        parser.add_argument(
            "--lock-timeout", default="3s",
            help="longest a migration waits for a table lock, and so the longest the app's "
            "queries queue behind it (default 3s)",
        )
        parser.add_argument("--statement-timeout", default="15min",
                            help="longest a statement may run; 0 = no limit (default 15min)")
        parser.add_argument("--retries", type=int, default=_DEFAULTS.retries,
                            help="retries of a migration that hit lock_timeout (default 5)")
        parser.add_argument("--retry-delay", default="1s",
                            help="first pause before a retry; doubles each time (default 1s)")
        parser.add_argument("--lock-wait", default="0",
                            help="how long to wait for the cluster lock (default: fail at once)")

    def handle(self, *args: Any, **options: Any) -> None:
        aliases = selected_aliases(options["shards"])
        shards = aliases[1:]
        jobs = options["jobs"] or default_jobs(len(shards))
        if jobs < 1:
            raise CommandError("--jobs must be at least 1")
        try:
            policy = policy_from_options(options)
            lock_wait = parse_duration(options["lock_wait"])
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.verbosity = options["verbosity"]
        _import_management_modules()
        console = Console(self.stdout, aliases)

        if options["plan"] or options["check"] or options["lint"]:
            plans = plan_fleet(aliases, jobs=jobs, lint=options["lint"])
            if options["plan"]:
                self._print_plan(console, plans)
            findings = self._print_lint(plans) if options["lint"] else []
            if options["check"]:
                self._check(console, plans)
            if findings:
                raise CommandError(
                    f"lint flagged {len(findings)} operation(s) unsafe on large live tables; "
                    "rewrite them the safer way, or acknowledge one in its migration with "
                    "lint_ignore = [\"<rule>\"]"
                    + ("" if options["plan"] else ". Nothing was migrated")
                )
            if options["plan"] or options["check"]:
                return

        purpose = "migrate_shards" + (f" --shard {','.join(shards)}" if options["shards"] else "")
        try:
            with cluster_lock(purpose, wait=lock_wait) as lock:
                self.stdout.write(
                    f"Migrating control, then {len(shards)} shard(s), {jobs} at a time "
                    f"({policy.describe()}); cluster lock held by {lock.holder.who}"
                )
                with console.running():
                    fleet = migrate_fleet(shards, jobs=jobs, policy=policy, reporter=console,
                                          fail_fast=options["fail_fast"], lock=lock)
        except psycopg.OperationalError as exc:
            # Only the lock's own connection gets here: each database's errors are in its result.
            raise CommandError(
                f"cannot take the cluster lock: the control primary's direct DSN does not "
                f"answer ({str(exc).strip()}). Check the control server and the topology file."
            ) from exc
        self._summary(fleet)

    # -- --plan, --lint, --check ---------------------------------------------------------------

    def _print_plan(self, console: Console, plans: list[DatabasePlan]) -> None:
        self.stdout.write(self.style.MIGRATE_HEADING("Plan (nothing is changed):"))
        for plan in plans:
            style = self.style.ERROR if plan.error else (
                self.style.SUCCESS if plan.up_to_date else self.style.WARNING
            )
            self.stdout.write(f"{console.prefix(plan.alias)} {style(describe_plan(plan))}")
            for name in plan.pending:
                self.stdout.write(f"{console.prefix(plan.alias)}   {name}")
            if self.verbosity > 1:
                for name in plan.recorded_only:
                    self.stdout.write(f"{console.prefix(plan.alias)}   {name} (record only)")

    def _print_lint(self, plans: list[DatabasePlan]) -> list[Finding]:
        where: dict[Finding, list[str]] = defaultdict(list)
        for plan in plans:
            for finding in plan.findings:
                where[finding].append(plan.alias)
        if not where:
            self.stdout.write(self.style.SUCCESS("Lint: no operation unsafe on large live "
                                                 "tables in the pending migrations."))
            return []
        self.stdout.write(self.style.WARNING(
            f"Lint: {len(where)} operation(s) unsafe on large live tables:"
        ))
        for finding, aliases in where.items():
            self.stdout.write(
                f"  {self.style.WARNING(finding.rule)} {finding.migration}: {finding.operation} "
                f"(pending on {', '.join(aliases)})"
            )
            self.stdout.write(f"      problem: {finding.problem}")
            self.stdout.write(f"      safer:   {finding.safer}")
        return list(where)

    def _check(self, console: Console, plans: list[DatabasePlan]) -> None:
        behind = outstanding(plans)
        if not behind:
            self.stdout.write(self.style.SUCCESS(
                f"All {len(plans)} database(s) are fully migrated."
            ))
            return
        self.stdout.write(self.style.ERROR("Unapplied migrations:"))
        for plan in behind:
            if plan.error:
                detail = f"could not be checked: {plan.error}"
            else:
                detail = ", ".join(plan.pending) or "-"
                if plan.recorded_only:
                    detail += f" (+{len(plan.recorded_only)} to record only)"
            self.stdout.write(f"{console.prefix(plan.alias)} {detail}")
        raise CommandError(
            f"{len(behind)} of {len(plans)} database(s) not fully migrated: "
            f"{', '.join(p.alias for p in behind)}. Run migrate_shards."
        )

    # -- the summary ---------------------------------------------------------------------------

    def _summary(self, fleet: FleetResult) -> None:
        rows = [
            [r.alias, _applied(r), f"{r.duration:.2f}s", _result(r)] for r in fleet.results
        ]
        self.stdout.write("")
        for i, line in enumerate(render_table(["DATABASE", "APPLIED", "DURATION", "RESULT"],
                                              rows)):
            if i and not fleet.results[i - 1].ok:
                line = self.style.ERROR(line)
            self.stdout.write(line)
        shards = len(fleet.results) - 1
        self.stdout.write(
            f"Migrated control in {fleet.control_seconds:.2f}s and {shards} shard(s) in "
            f"{fleet.shards_seconds:.2f}s (jobs {fleet.jobs}, {fleet.shards_cpu_seconds:.2f}s CPU)."
        )
        failed = fleet.failed
        if fleet.interrupted:
            raise CommandError(
                "interrupted: running migrations finished, nothing new was started. "
                "Run migrate_shards again to finish."
            )
        if failed:
            raise CommandError(
                f"{len(failed)} of {len(fleet.results)} database(s) not fully migrated: "
                + "; ".join(f"{r.alias}: {r.error}" for r in failed)
                + ". Fix the cause and run migrate_shards again: what is applied is skipped."
            )


def _applied(result: DatabaseResult) -> str:
    text = str(len(result.applied))
    return f"{text} (+{result.recorded} recorded)" if result.recorded else text


def _result(result: DatabaseResult) -> str:
    if result.ok:
        return "ok" if result.applied or result.recorded else "ok (up to date)"
    left = f" ({len(result.remaining)} left)" if result.remaining else ""
    return f"{result.status.upper()}{left}: {result.error}"


def _import_management_modules() -> None:
    # As Django's migrate: apps may connect migration signal handlers in management modules.
    for app_config in apps.get_app_configs():
        if module_has_submodule(app_config.module, "management"):
            import_module(".management", app_config.name)
