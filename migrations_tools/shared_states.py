"""Model states shared by the databases of one migrate_shards run.

Applying a migration needs the project state before and after each of its operations, rendered
as model classes, and `pre_migrate`/`post_migrate` need rendered apps too. That rendering is
most of the Python a shard costs (profiled: about two thirds of a new shard's CPU), and in the
runner's threads it is serialised by the GIL: eight new shards rendered the same states eight
times over, one after the other. Every database that starts from the same applied migrations
and runs the same ones passes through the same states, so the first to need them renders them
and the others wait for that and reuse them.

Shared states are never changed after they are built: each operation's "after" state is a
clone of its own (Django's Migration.apply changes one state in place as it goes, which only
works for one database at a time). The schema editor and RunPython only read the historical
models they get, as in Django's own executor.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from django.apps import apps as global_apps
from django.db import transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.migration import Migration
from django.db.migrations.state import ModelState, ProjectState, StateApps

from migrations_tools.plans import record_applied

# (state before, state after) for each operation of a migration, in order.
OperationStates = list[tuple[ProjectState, ProjectState]]


@dataclass(frozen=True)
class Steps:
    """The rendered states one plan goes through, from one starting state."""
    pre_apps: StateApps  # the applied migrations' apps, for pre_migrate
    operations: dict[tuple[str, str], OperationStates]  # the migrations that run here
    post_apps: StateApps  # for post_migrate, as Django's migrate command renders them


def advance(state: ProjectState, migration: Migration) -> ProjectState:
    """Advance the state past a migration none of whose operations runs here.

    Django's executor would run each operation (a no-op here) against a rendered state,
    re-rendering the affected models at every step: on a new shard, where every control app's
    migration is such a no-op, that was most of the time spent. A plain state advances in
    microseconds and is rendered again only when a migration that runs here needs it.
    """
    state.__dict__.pop("apps", None)  # drop the rendered models (a cached property)
    migration.mutate_state(state, preserve=False)
    return state


def build_steps(state: ProjectState, plan: Sequence[Migration], runs: Sequence[bool]) -> Steps:
    """Walk `state` (consumed) through `plan`; `runs[i]`: whether plan[i] runs here."""
    pre_apps = state.clone().apps
    operations: dict[tuple[str, str], OperationStates] = {}
    for migration, here in zip(plan, runs, strict=True):
        if not here:
            advance(state, migration)
            continue
        state.apps  # noqa: B018 - rendered here (a cached property); its clones stay rendered
        before = state.clone()
        pairs: OperationStates = []
        for operation in migration.operations:
            operation.state_forwards(migration.app_label, state)
            after = state.clone()
            pairs.append((before, after))
            before = after
        operations[(migration.app_label, migration.name)] = pairs
    return Steps(pre_apps=pre_apps, operations=operations, post_apps=_post_apps(state))


def _post_apps(state: ProjectState) -> StateApps:
    # As Django's migrate command: handlers get the final state with real apps re-rendered
    # from the installed models, relationships included.
    state.clear_delayed_apps_cache()
    post_apps = state.apps
    with post_apps.bulk_update():
        model_keys = []
        for model_state in post_apps.real_models:
            key = model_state.app_label, model_state.name_lower
            model_keys.append(key)
            post_apps.unregister_model(*key)
    post_apps.render_multiple(
        [ModelState.from_model(global_apps.get_model(*key)) for key in model_keys]
    )
    return post_apps


def apply_migration(executor: MigrationExecutor, migration: Migration,
                    states: OperationStates) -> None:
    """MigrationExecutor.apply_migration with Migration.apply's loop, over states built
    beforehand instead of one state changed in place.

    One difference: an atomic migration's deferred SQL (foreign keys, indexes) runs before the
    migration is recorded, and the record goes in the same transaction. Django runs it as the
    schema editor closes and records the migration after the commit, in a transaction (a
    wait for the disk) of its own. Here a failure of either rolls both back."""
    connection = executor.connection
    recorded = False
    with connection.schema_editor(atomic=migration.atomic) as editor:
        for operation, (before, after) in zip(migration.operations, states, strict=True):
            atomic_operation = operation.atomic or (
                migration.atomic and operation.atomic is not False)
            if not editor.atomic_migration and atomic_operation:
                with transaction.atomic(connection.alias):
                    operation.database_forwards(migration.app_label, editor, before, after)
            else:
                operation.database_forwards(migration.app_label, editor, before, after)
        if editor.atomic_migration:
            while editor.deferred_sql:  # what the editor would run as it closes, in order
                editor.execute(editor.deferred_sql.pop(0))
        if not editor.deferred_sql:
            record_applied(executor, [migration])
            recorded = True
    if not recorded:
        record_applied(executor, [migration])


class SharedStates:
    """Steps by starting point: built by the first database that needs them, while the others
    with the same starting point wait, then reused by all of them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._slots: dict[Hashable, _Slot] = {}

    def steps(self, key: Hashable, build: Callable[[], Steps]) -> Steps:
        with self._lock:
            slot = self._slots.setdefault(key, _Slot())
        with slot.lock:  # one builder per key; a failed build leaves it to the next caller
            if slot.steps is None:
                slot.steps = build()
            return slot.steps


class _Slot:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.steps: Steps | None = None
