"""`--lint`: operations that are fine on an empty table and dangerous on a large, live one.

Only operations on tables that exist before the run are flagged: a table created earlier in the
same run is new and empty, so building its indexes or rewriting it costs nothing. Each finding
names the lock it takes, what waits behind it, and the safer way to write it.

A migration that does the risky thing on purpose (a table known to be small) says so with a class
attribute, e.g. ``lint_ignore = ["index-not-concurrent"]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import models
from django.db.migrations import operations as ops
from django.db.migrations.migration import Migration
from django.db.migrations.state import ProjectState

INDEX_NOT_CONCURRENT = "index-not-concurrent"
CONSTRAINT_VALIDATION = "constraint-validation"
COLUMN_REWRITE = "column-rewrite"
NOT_NULL_WITHOUT_DEFAULT = "not-null-without-default"
SET_NOT_NULL = "set-not-null"

SAFER = {
    INDEX_NOT_CONCURRENT: (
        "build it with django.contrib.postgres.operations.AddIndexConcurrently in a migration "
        "with atomic = False (one index per migration: a failure leaves at most one INVALID "
        "index to drop); for a unique constraint, create the unique index concurrently, then "
        "ALTER TABLE ... ADD CONSTRAINT ... UNIQUE USING INDEX inside SeparateDatabaseAndState"
    ),
    CONSTRAINT_VALIDATION: (
        "add the constraint NOT VALID (RunSQL inside SeparateDatabaseAndState), then run "
        "ALTER TABLE ... VALIDATE CONSTRAINT in a later migration: validating takes only a "
        "SHARE UPDATE EXCLUSIVE lock, so reads and writes go on"
    ),
    COLUMN_REWRITE: (
        "add a new column, backfill it in batches, switch the code to it, then drop the old "
        "column (widening varchar(n) to varchar(m > n) or text is instant)"
    ),
    NOT_NULL_WITHOUT_DEFAULT: (
        "give it db_default=<constant> (PostgreSQL 11+ stores a constant default without "
        "touching the rows), or add it with null=True, backfill in batches, then enforce "
        "NOT NULL as in set-not-null"
    ),
    SET_NOT_NULL: (
        "add CHECK (column IS NOT NULL) NOT VALID, VALIDATE CONSTRAINT in a later migration, "
        "then SET NOT NULL (PostgreSQL 12+ skips the scan when a valid CHECK proves it) and "
        "drop the CHECK"
    ),
}
_VARCHAR_RE = re.compile(r"^varchar\((\d+)\)$")


@dataclass(frozen=True)
class Finding:
    migration: str  # app.name
    operation: str  # Django's description of the operation
    table: str
    rule: str
    problem: str

    @property
    def safer(self) -> str:
        return SAFER[self.rule]


ModelKey = tuple[str, str]


def lint_plan(plan: Sequence[tuple[Migration, bool]], state: ProjectState,
              connection: Any) -> list[Finding]:
    """Findings for pending migrations, in order.

    `plan` pairs each pending migration with whether its SQL runs on this database; `state` is
    the schema as applied now (it is advanced in place: pass a state you own); `connection`
    is only used for column types, nothing is executed.
    """
    existing: set[ModelKey] = {
        key for key, model in state.models.items() if _has_table(model.options)
    }
    findings: list[Finding] = []
    for migration, runs_here in plan:
        label = f"{migration.app_label}.{migration.name}"
        ignored = set(getattr(migration, "lint_ignore", ()))
        for operation in migration.operations:
            if runs_here:
                for finding in _check(operation, migration.app_label, state, existing,
                                      connection, label):
                    if finding.rule not in ignored:
                        findings.append(finding)
            _track_tables(operation, migration.app_label, existing)
            operation.state_forwards(migration.app_label, state)
    return findings


def _has_table(options: dict[str, Any]) -> bool:
    return options.get("managed", True) and not options.get("proxy", False)


def _track_tables(operation: Any, app_label: str, existing: set[ModelKey]) -> None:
    if isinstance(operation, ops.DeleteModel):
        existing.discard((app_label, operation.name_lower))
    elif isinstance(operation, ops.RenameModel):
        old = (app_label, operation.old_name_lower)
        if old in existing:
            existing.discard(old)
            existing.add((app_label, operation.new_name_lower))
    # CreateModel adds nothing: its table is new and empty in this run.


def _table(state: ProjectState, key: ModelKey) -> str:
    model = state.models.get(key)
    db_table = model.options.get("db_table") if model is not None else None
    return db_table or f"{key[0]}_{key[1]}"


def _db_type(field: models.Field, connection: Any) -> str | None:
    if field.is_relation:
        return None
    try:
        return field.db_type(connection)
    except Exception:  # an unbound custom field may need its model: no verdict then
        return None


def _cheap_type_change(old: str, new: str) -> bool:
    """Changes PostgreSQL makes without rewriting the table."""
    old_match, new_match = _VARCHAR_RE.match(old), _VARCHAR_RE.match(new)
    if old_match and new == "text":
        return True
    return bool(old_match and new_match and int(new_match[1]) >= int(old_match[1]))


def _check(operation: Any, app_label: str, state: ProjectState, existing: set[ModelKey],
           connection: Any, label: str) -> Iterator[Finding]:
    if isinstance(operation, ops.SeparateDatabaseAndState):
        # Its database side runs as written; the state side changes nothing on disk.
        for inner in operation.database_operations:
            yield from _check(inner, app_label, state, existing, connection, label)
        return
    model_name = getattr(operation, "model_name_lower", None) or getattr(
        operation, "name_lower", None
    )
    if model_name is None or (app_label, model_name) not in existing:
        return
    key = (app_label, model_name)
    table = _table(state, key)

    def finding(rule: str, problem: str) -> Finding:
        return Finding(migration=label, operation=operation.describe(), table=table, rule=rule,
                       problem=problem)

    if isinstance(operation, ops.AddIndex) and type(operation).__name__ != (
        "AddIndexConcurrently"
    ):
        yield finding(
            INDEX_NOT_CONCURRENT,
            f"CREATE INDEX on {table} holds a SHARE lock for the whole build: every write to "
            "the table waits until it finishes",
        )
    elif isinstance(operation, ops.AddConstraint):
        yield from _check_constraint(operation.constraint, table, finding)
    elif isinstance(operation, ops.AddField):
        yield from _check_add_field(operation.field, operation.name, table, finding)
    elif isinstance(operation, ops.AlterField):
        old = state.models[key].fields.get(operation.name)
        if old is not None:
            yield from _check_alter_field(old, operation.field, operation.name, table,
                                          connection, finding)
    elif isinstance(operation, ops.AlterUniqueTogether | ops.AlterIndexTogether):
        option = operation.option_name
        before = {tuple(x) for x in state.models[key].options.get(option) or ()}
        after = {tuple(x) for x in operation.option_value or ()}
        if after - before:
            yield finding(
                INDEX_NOT_CONCURRENT,
                f"{option} builds its new index on {table} while writes to the table wait",
            )


def _check_constraint(constraint: Any, table: str, finding: Any) -> Iterable[Finding]:
    if isinstance(constraint, models.UniqueConstraint) or type(constraint).__name__ == (
        "ExclusionConstraint"
    ):
        yield finding(
            INDEX_NOT_CONCURRENT,
            f"adding {constraint.name} builds its index on {table} with reads and writes "
            "blocked (ALTER TABLE ... ADD CONSTRAINT takes an ACCESS EXCLUSIVE lock)",
        )
    elif isinstance(constraint, models.CheckConstraint):
        yield finding(
            CONSTRAINT_VALIDATION,
            f"adding {constraint.name} scans every row of {table} under an ACCESS EXCLUSIVE "
            "lock: reads and writes wait for the scan",
        )


def _check_add_field(field: models.Field, name: str, table: str,
                     finding: Any) -> Iterable[Finding]:
    if field.many_to_many:
        return  # a new join table: nothing on this table
    has_default = field.has_default() or field.db_default is not models.NOT_PROVIDED
    if not field.null and not has_default:
        yield finding(
            NOT_NULL_WITHOUT_DEFAULT,
            f"ADD COLUMN {name} NOT NULL without a default fails on a table with rows, and any "
            f"default added later to make it pass is written into every row of {table}",
        )
    if (getattr(field, "db_index", False) or field.unique) and not field.primary_key:
        yield finding(
            INDEX_NOT_CONCURRENT,
            f"the index on the new column {name} is built on {table} while writes wait",
        )
    if field.is_relation and getattr(field, "db_constraint", False):
        yield finding(
            CONSTRAINT_VALIDATION,
            f"the FOREIGN KEY on {name} is validated by scanning {table} under SHARE ROW "
            "EXCLUSIVE locks on both tables (set db_constraint=False, then add it NOT VALID)",
        )


def _check_alter_field(old: models.Field, new: models.Field, name: str, table: str,
                       connection: Any, finding: Any) -> Iterable[Finding]:
    old_type, new_type = _db_type(old, connection), _db_type(new, connection)
    if old_type and new_type and old_type != new_type and not _cheap_type_change(
        old_type, new_type
    ):
        yield finding(
            COLUMN_REWRITE,
            f"changing {name} from {old_type} to {new_type} rewrites {table} and its indexes "
            "under an ACCESS EXCLUSIVE lock: reads and writes wait for the whole rewrite",
        )
    if old.null and not new.null:
        yield finding(
            SET_NOT_NULL,
            f"SET NOT NULL on {name} scans every row of {table} under an ACCESS EXCLUSIVE lock",
        )
    old_index, new_index = getattr(old, "db_index", False), getattr(new, "db_index", False)
    added_index = (new_index and not old_index) or (new.unique and not old.unique)
    if added_index and not new.primary_key:
        yield finding(
            INDEX_NOT_CONCURRENT,
            f"the new index on {name} is built on {table} while writes wait",
        )
