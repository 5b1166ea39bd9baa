"""What migrate_shards records for migrations that run no SQL on a database
(migrations_tools.plans.recorded_keys)."""

from __future__ import annotations

from django.db.migrations.migration import Migration

from migrations_tools.plans import recorded_keys


def migration(app: str, name: str, replaces: list[tuple[str, str]] | None = None) -> Migration:
    made = Migration(name, app)
    if replaces is not None:
        made.replaces = replaces
    return made


def test_each_migration_is_recorded_by_app_and_name_in_order() -> None:
    batch = [migration("auth", "0001_initial"), migration("sites", "0001_initial"),
             migration("auth", "0002_more")]
    assert recorded_keys(batch) == [
        ("auth", "0001_initial"), ("sites", "0001_initial"), ("auth", "0002_more"),
    ]


def test_a_squashed_migration_records_the_migrations_it_replaces_and_itself() -> None:
    replaced = [("auth", "0001_initial"), ("auth", "0002_a"), ("auth", "0003_b")]
    squashed = migration("auth", "0001_squashed_0003", replaces=replaced)
    assert recorded_keys([squashed, migration("sites", "0002_x")]) == [
        ("auth", "0001_initial"), ("auth", "0002_a"), ("auth", "0003_b"),
        ("auth", "0001_squashed_0003"), ("sites", "0002_x"),
    ]


def test_nothing_to_record() -> None:
    assert recorded_keys([]) == []
