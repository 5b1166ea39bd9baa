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


SQUASHED = ("comments", "0001_squashed_0004_drop_thread_url_uniq")
REPLACED = [("comments", "0001_initial"), ("comments", "0002_page_indexes"),
            ("comments", "0003_thread_url_md5_uniq"), ("comments", "0004_drop_thread_url_uniq")]


def database_loader(graph: RunGraph, alias: str,
                    applied: list[tuple[str, str]]) -> MigrationLoader:
    return run_graph._DatabaseLoader(graph.loader(),
                                     Recorded(alias, applied))  # type: ignore[arg-type]


def test_the_graph_is_loaded_once_for_every_database() -> None:
    graph = RunGraph()
    shared = graph.loader()
    assert graph.loader() is shared
    assert ("sites", "0001_initial") in shared.graph.nodes

    fresh = database_loader(graph, "shard_0", [])
    migrated = database_loader(graph, "shard_1", [("shards", "0001_initial"),
                                                ("sites", "0001_initial")])
    assert fresh.graph is migrated.graph is shared.graph
    assert set(fresh.applied_migrations) == set()
    assert set(migrated.applied_migrations) == {("shards", "0001_initial"),
                                                ("sites", "0001_initial")}
    leaf = next(key for key in shared.graph.leaf_nodes() if key[0] == "sites")
    fresh.check_consistent_history(fresh.connection)
    migrated.check_consistent_history(migrated.connection)
    assert leaf not in migrated.applied_migrations


def test_a_migration_applied_before_its_dependency_is_refused_as_django_does() -> None:
    loader = database_loader(RunGraph(), "shard_3", [("shards", "0001_initial"),
                                                     ("sites", "0002_site_key_generation")])
    with pytest.raises(InconsistentMigrationHistory) as info:
        loader.check_consistent_history(loader.connection)
    assert str(info.value) == (
        "Migration sites.0002_site_key_generation is applied before its dependency "
        "sites.0001_initial on database 'shard_3'."
    )


def test_the_shared_graph_holds_the_squashed_migration_in_place_of_what_it_replaces() -> None:
    graph = RunGraph()
    assert SQUASHED in graph.loader().graph.nodes
    assert not any(key in graph.loader().graph.nodes for key in REPLACED)
    # A new database applies the squashed migration...
    assert SQUASHED not in database_loader(graph, "shard_0", []).applied_migrations
    # ...and one with all it replaces applied has it applied, recorded or not, as Django has.
    migrated = database_loader(graph, "shard_1", REPLACED)
    assert SQUASHED in migrated.applied_migrations
    migrated.check_consistent_history(migrated.connection)


def test_a_partly_applied_squash_gets_a_graph_of_its_own() -> None:
    with pytest.raises(run_graph.PartlySquashed):
        database_loader(RunGraph(), "shard_2", REPLACED[:2])
    # Django's own loader for such a database keeps the replaced migrations instead.
    loader = MigrationLoader(None, load=False)
    loader.load_disk()
    assert all(key in loader.disk_migrations for key in REPLACED)
