"""What migrating the fleet would do: per database, the migrations to apply or only record.

Shared with the runner (`runner.py`), which applies these plans: which databases are selected
and how many at once. The loader lock and executors over a shared graph are in `run_graph.py`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from django.db import connections, router
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration
from django.db.migrations.state import ProjectState
from django.utils import timezone

from migrations_tools.connections import direct_connections
from migrations_tools.errors import MigrationFailed
from migrations_tools.lint import Finding, lint_plan
from migrations_tools.run_graph import RunGraph, executor_for
from migrations_tools.safety import (
    ExecutionPolicy,
    error_summary,
    parse_duration,
)
from shards.aliases import CONTROL_ALIAS
from shards.topology import get_shard_map

T = TypeVar("T")

MAX_DEFAULT_JOBS = 16


def migration_label(migration: Migration) -> str:
    return f"{migration.app_label}.{migration.name}"


def recorded_keys(migrations: Sequence[Migration]) -> list[tuple[str, str]]:
    """The django_migrations rows (app, name) that mark `migrations` applied, in order. As
    MigrationExecutor.record_migration, a squashed migration records what it replaces; and
    itself, in the same statement, which Django's check_replacements would record after the
    run in a transaction (a wait for the disk) of its own."""
    return [key for migration in migrations
            for key in [*migration.replaces, (migration.app_label, migration.name)]]


def record_applied(executor: MigrationExecutor, migrations: Sequence[Migration]) -> None:
    """Mark `migrations` applied in django_migrations with one INSERT, in the caller's
    transaction if there is one. MigrationRecorder.record_applied builds a model instance and
    compiles an INSERT ... RETURNING per row through the ORM: profiled, more Python than
    running the statement, paid per migration and per shard."""
    keys = recorded_keys(migrations)
    if not keys:
        return
    recorder = executor.recorder
    recorder.ensure_schema()
    connection = executor.connection
    table = connection.ops.quote_name(recorder.Migration._meta.db_table)
    apps, names = (list(column) for column in zip(*keys, strict=True))
    with connection.cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {table} (app, name, applied) "
            "SELECT app, name, %s FROM unnest(%s::varchar[], %s::varchar[]) AS r(app, name)",
            [timezone.now(), apps, names],
        )


def runs_here(alias: str, migration: Migration) -> bool:
    """Whether any of the migration's operations runs on `alias` (Django records every
    migration on every database, the others as no-ops). Asked per operation, with the model
    name and hints Django's own operations pass to the router."""
    return any(_operation_runs_here(alias, migration.app_label, op)
               for op in migration.operations)


def _operation_runs_here(alias: str, app_label: str, operation: Any) -> bool:
    inner = getattr(operation, "database_operations", None)  # SeparateDatabaseAndState
    if inner is not None:
        return any(_operation_runs_here(alias, app_label, op) for op in inner)
    hints = dict(getattr(operation, "hints", None) or {})
    model_name = getattr(operation, "model_name_lower", None) or getattr(
        operation, "name_lower", None
    )
    if model_name is not None:
        hints.setdefault("model_name", model_name)
    return bool(router.allow_migrate(alias, app_label, **hints))


def selected_aliases(shards: Sequence[str] | None = None) -> list[str]:
    """Control, then the selected shards (all by default), in topology order."""
    shard_map = get_shard_map()
    wanted = set(shards or shard_map.shard_names)
    for name in wanted:
        shard_map.shard(name)  # raises UnknownShard with the known names
    return [CONTROL_ALIAS, *(name for name in shard_map.shard_names if name in wanted)]


def default_jobs(shard_count: int) -> int:
    return max(1, min(shard_count, MAX_DEFAULT_JOBS))


class Reporter(Protocol):
    def line(self, alias: str, text: str) -> None:
        """A line of output for `alias` (the caller prefixes it)."""

    def status(self, alias: str, text: str | None) -> None:
        """What `alias` is doing now, for a live display; None when it is done."""


class SilentReporter:
    def line(self, alias: str, text: str) -> None:
        pass

    def status(self, alias: str, text: str | None) -> None:
        pass


# --- plans --------------------------------------------------------------------------------------


@dataclass
class DatabasePlan:
    alias: str
    pending: list[str] = field(default_factory=list)  # run SQL on this database
    recorded_only: list[str] = field(default_factory=list)  # other databases' apps
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.error is None and not self.pending and not self.recorded_only


def applied_state(executor: MigrationExecutor) -> ProjectState:
    """The project state of the migrations applied on the executor's database (not rendered).
    Django's migrate command builds it with this same private method."""
    state: ProjectState = executor._create_project_state(  # type: ignore[attr-defined]
        with_applied_migrations=True
    )
    return state


def full_plan(executor: MigrationExecutor, connection: BaseDatabaseWrapper
               ) -> list[tuple[Migration, bool]]:
    executor.loader.check_consistent_history(connection)
    conflicts = executor.loader.detect_conflicts()
    if conflicts:
        names = "; ".join(f"{', '.join(n)} in {app}" for app, n in conflicts.items())
        raise MigrationFailed(
            "graph", f"conflicting migrations ({names}): run makemigrations --merge"
        )
    plan = executor.migration_plan(executor.loader.graph.leaf_nodes())
    return list(plan)


def plan_database(alias: str, *, lint: bool = False,
                  graph: RunGraph | None = None) -> DatabasePlan:
    """What migrate_shards would apply on `alias` now; changes nothing. `graph`: the
    migration graph shared with the other databases planned in the same run."""
    result = DatabasePlan(alias=alias)
    try:
        with direct_connections(alias, application_name="shardsvc migrate_shards --plan"):
            connection = connections[alias]
            executor = executor_for(connection, graph)
            plan = full_plan(executor, connection)
            for migration, _ in plan:
                bucket = result.pending if runs_here(alias, migration) else result.recorded_only
                bucket.append(migration_label(migration))
            if lint and result.pending:
                state = applied_state(executor)
                result.findings = lint_plan(
                    [(m, runs_here(alias, m)) for m, _ in plan], state, connection
                )
    except Exception as exc:  # reported per database; the others still get planned
        result.error = error_summary(exc)
    return result


def plan_fleet(aliases: Sequence[str], *, jobs: int, lint: bool = False) -> list[DatabasePlan]:
    graph = RunGraph()
    return fan_out(aliases, lambda alias: plan_database(alias, lint=lint, graph=graph),
                   jobs=jobs)


def fan_out(aliases: Sequence[str], work: Callable[[str], T], *, jobs: int) -> list[T]:
    """`work(alias)` for each alias, up to `jobs` at a time, results in the given order."""
    with ThreadPoolExecutor(max_workers=max(1, jobs), thread_name_prefix="shards") as pool:
        return list(pool.map(work, aliases))


def outstanding(plans: Sequence[DatabasePlan]) -> list[DatabasePlan]:
    """Databases that are not fully migrated (or could not be checked)."""
    return [p for p in plans if not p.up_to_date]


def describe_plan(plan: DatabasePlan) -> str:
    if plan.error is not None:
        return f"could not be planned: {plan.error}"
    if plan.up_to_date:
        return "up to date"
    parts = [f"{len(plan.pending)} to apply"]
    if plan.recorded_only:
        parts.append(f"{len(plan.recorded_only)} to record only (apps of other databases)")
    return ", ".join(parts)


def policy_from_options(options: dict[str, Any]) -> ExecutionPolicy:
    return ExecutionPolicy(
        lock_timeout=parse_duration(options["lock_timeout"]),
        statement_timeout=parse_duration(options["statement_timeout"]),
        retries=int(options["retries"]),
        retry_delay=parse_duration(options["retry_delay"]),
    )
