"""The migration graph shared by the databases of one migrate_shards run
(migrations_tools.run_graph): loaded once, each database with its own applied set."""

from __future__ import annotations

from typing import Any

import pytest
from django.db.migrations.exceptions import InconsistentMigrationHistory
from django.db.migrations.loader import MigrationLoader

from migrations_tools import run_graph
from migrations_tools.run_graph import RunGraph


class Recorded:
    """What a database's django_migrations says (a stand-in for its MigrationRecorder)."""

    def __init__(self, alias: str, applied: list[tuple[str, str]]) -> None:
        self.connection = type("Connection", (), {"alias": alias})()
        self._applied = {key: object() for key in applied}

    def applied_migrations(self) -> dict[tuple[str, str], Any]:
        return dict(self._applied)


def database_loader(graph: RunGraph, alias: str,
                    applied: list[tuple[str, str]]) -> MigrationLoader:
    shared = graph.loader()
    assert shared is not None
    return run_graph._DatabaseLoader(shared, Recorded(alias, applied))  # type: ignore[arg-type]


def test_the_graph_is_loaded_once_for_every_database() -> None:
    graph = RunGraph()
    shared = graph.loader()
    assert shared is not None and graph.loader() is shared
    assert ("comments", "0001_initial") in shared.graph.nodes

    fresh = database_loader(graph, "shard_0", [])
    migrated = database_loader(graph, "shard_1", [("comments", "0001_initial")])
    assert fresh.graph is migrated.graph is shared.graph
    assert set(fresh.applied_migrations) == set()
    assert set(migrated.applied_migrations) == {("comments", "0001_initial")}
    leaf = next(key for key in shared.graph.leaf_nodes() if key[0] == "comments")
    fresh.check_consistent_history(fresh.connection)
    migrated.check_consistent_history(migrated.connection)
    assert leaf not in migrated.applied_migrations


def test_a_migration_applied_before_its_dependency_is_refused_as_django_does() -> None:
    loader = database_loader(RunGraph(), "shard_3", [("comments", "0002_page_indexes")])
    with pytest.raises(InconsistentMigrationHistory) as info:
        loader.check_consistent_history(loader.connection)
    assert str(info.value) == (
        "Migration comments.0002_page_indexes is applied before its dependency "
        "comments.0001_initial on database 'shard_3'."
    )


def test_squashed_migrations_make_each_database_load_its_own_graph(
        monkeypatch: pytest.MonkeyPatch) -> None:
    class WithSquash(MigrationLoader):
        def build_graph(self) -> None:
            super().build_graph()
            # As if comments.0001_squashed replaced 0001 and 0002: which nodes the graph keeps
            # depends on how many of those a database has applied.
            self.replacements = {("comments", "0001_squashed"): object()}

    monkeypatch.setattr(run_graph, "MigrationLoader", WithSquash)
    assert RunGraph().loader() is None
