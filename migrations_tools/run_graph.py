"""The migration graph of one migrate_shards run, loaded from disk once and shared by its databases.

Django's MigrationExecutor builds a MigrationLoader per database, and each reloads every app's
migration modules from disk (importlib.reload) and builds the dependency graph again: about a
third of the Python a new shard cost, serialised by the GIL across the runner's threads, and the
same graph every time. Without squashed migrations the graph does not depend on the database:
only the applied set does, which each database reads once (one query instead of three: the
loader, the consistency check and check_replacements each read it again).

A migration that `replaces` others makes the graph depend on what is applied (Django keeps the
squashed node or the replaced ones, depending on how many of them are applied), so with any such
migration on disk every database loads its own graph, as Django does.

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

    def loader(self) -> MigrationLoader | None:
        """The shared loader, or None when squashed migrations make the graph per database."""
        with self._lock:
            if self._loader is None:
                with LOADER_LOCK:
                    self._loader = MigrationLoader(None)  # disk only: nothing is applied
            return None if self._loader.replacements else self._loader


class _DatabaseLoader(MigrationLoader):
    """A loader for one database over a shared graph: its own applied set, read once."""

    def __init__(self, shared: MigrationLoader, recorder: MigrationRecorder) -> None:
        super().__init__(recorder.connection, load=False)
        self.disk_migrations = shared.disk_migrations
        self.unmigrated_apps = shared.unmigrated_apps
        self.migrated_apps = shared.migrated_apps
        self.graph = shared.graph
        self.replacements: dict[Any, Any] = {}
        applied: dict[Any, Any] = recorder.applied_migrations()  # recorder rows, as Django's
        self.applied_migrations = applied

    def check_consistent_history(self, connection: BaseDatabaseWrapper) -> None:
        # Django's check, over the applied set read above rather than a second query (there
        # are no squashed migrations here, so no replacement to make allowance for).
        applied = self.applied_migrations
        for migration in applied:
            if migration not in self.graph.nodes:
                continue
            for parent in self.graph.node_map[migration].parents:
                if parent not in applied:
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
    shared = graph.loader() if graph is not None else None
    if shared is not None:
        return _ExecutorOnGraph(connection, shared)
    with LOADER_LOCK:
        return MigrationExecutor(connection)


def check_replacements(executor: MigrationExecutor) -> None:
    """MigrationExecutor.check_replacements, which reads the applied set once more: only
    when there are squashed migrations to mark."""
    if executor.loader.replacements:
        executor.check_replacements()
