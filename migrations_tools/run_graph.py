"""The migration graph of one migrate_shards run, loaded from disk once and shared by its databases.

Django's MigrationExecutor builds a MigrationLoader per database, and each reloads every app's
migration modules from disk (importlib.reload) and builds the dependency graph again: about a
third of the Python a new shard cost, serialised by the GIL across the runner's threads, and the
same graph every time. The graph does not depend on the database, only the applied set does,
which each database reads once (one query instead of three: the loader, the consistency check
and check_replacements each read it again).

Except for a squashed migration (one that `replaces` others) with only some of what it replaces
applied: Django then keeps the replaced nodes instead of the squashed one. With none or all of
them applied it keeps the squashed node, as the shared graph (loaded with nothing applied)
does, so only a database with a partly applied squash loads a graph of its own, as Django does.

The shared graph is only read: planning, forwards plans and project states never change it.
"""

from __future__ import annotations

import threading
from typing import Any

from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.migrations.exceptions import InconsistentMigrationHistory
from django.db.migrations.executor import MigrationExecutor
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder

# Building a MigrationLoader reloads each app's `migrations` package (importlib.reload), which
# is not safe to run from several threads at once; the rest of the work is per connection.
LOADER_LOCK = threading.Lock()


class RunGraph:
    """The migrations on disk and their graph, loaded once (lazily) for a run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._loader: MigrationLoader | None = None

    def loader(self) -> MigrationLoader:
        """The shared loader: the graph as Django builds it for a database with nothing
        applied (squashed migrations in place of what they replace)."""
        with self._lock:
            if self._loader is None:
                with LOADER_LOCK:
                    self._loader = MigrationLoader(None)  # disk only: nothing is applied
            return self._loader


class PartlySquashed(Exception):
    """A squashed migration has some, not all, of what it replaces applied here."""


class _DatabaseLoader(MigrationLoader):
    """A loader for one database over a shared graph: its own applied set, read once."""

    def __init__(self, shared: MigrationLoader, recorder: MigrationRecorder) -> None:
        super().__init__(recorder.connection, load=False)
        self.disk_migrations = shared.disk_migrations
        self.unmigrated_apps = shared.unmigrated_apps
        self.migrated_apps = shared.migrated_apps
        self.graph = shared.graph
        self.replacements = shared.replacements
        self.recorded: dict[Any, Any] = recorder.applied_migrations()  # rows, as Django's
        applied: dict[Any, Any] = dict(self.recorded)
        for key, migration in self.replacements.items():  # as MigrationLoader.build_graph
            statuses = [target in applied for target in migration.replaces]
            if any(statuses) and not all(statuses):
                raise PartlySquashed(key)
            if all(statuses):
                applied[key] = migration
            else:
                applied.pop(key, None)
        self.applied_migrations = applied

    def check_consistent_history(self, connection: BaseDatabaseWrapper) -> None:
        # Django's check, over the rows read above rather than a second query.
        applied = self.recorded
        for migration in applied:
            if migration not in self.graph.nodes:
                continue
            for parent in self.graph.node_map[migration].parents:
                if parent not in applied:
                    # A squashed migration not recorded yet, all it replaces applied.
                    squashed = self.replacements.get(parent)
                    if squashed is not None and all(m in applied for m in squashed.replaces):
                        continue
                    raise InconsistentMigrationHistory(
                        f"Migration {migration[0]}.{migration[1]} is applied before its "
                        f"dependency {parent[0]}.{parent[1]} on database "
                        f"'{connection.alias}'."
                    )


class _ExecutorOnGraph(MigrationExecutor):
    def __init__(self, connection: BaseDatabaseWrapper, shared: MigrationLoader) -> None:
        # Not MigrationExecutor.__init__: that builds a loader of its own from disk.
        self.connection = connection
        self.recorder = MigrationRecorder(connection)
        self.loader = _DatabaseLoader(shared, self.recorder)
        self.progress_callback = None


def executor_for(connection: BaseDatabaseWrapper,
                 graph: RunGraph | None = None) -> MigrationExecutor:
    """A MigrationExecutor for `connection`; over `graph`'s shared graph when it can be."""
    if graph is not None:
        try:
            return _ExecutorOnGraph(connection, graph.loader())
        except PartlySquashed:
            pass
    with LOADER_LOCK:
        return MigrationExecutor(connection)


def check_replacements(executor: MigrationExecutor) -> None:
    """MigrationExecutor.check_replacements, which reads the applied set once more: only
    when there are squashed migrations to mark."""
    if executor.loader.replacements:
        executor.check_replacements()
