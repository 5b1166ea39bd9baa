"""check_shard_schema and shard_showmigrations against a real fleet: control + 3 shards, each with
a streaming replica, migrated by the topology manager (which runs migrate_shards).

Like a DBA, the tests run the commands as subprocesses with the topology's environment; the
pytest process's own Django settings belong to the session topology.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from deploy.topology import LocalTopology
from migrations_tools.drift import Fingerprint, compare
from tests.commands import manage
from tests.conftest import make_topology
from tests.dba_migrations import REAL_MIGRATIONS, comments_release

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet() -> Iterator[LocalTopology]:
    topo = make_topology("shardsvc-drift-", shards=3, replicas=1, start_port=26500)
    try:
        topo.up(service=False, migrate=True)  # migrate() runs migrate_shards
        yield topo
    finally:
        topo.destroy()


# --- comparison rules, no database ------------------------------------------------------------


def _print(alias: str, items: dict[str, str], role: str = "primary",
           cluster: str | None = None) -> Fingerprint:
    cluster = cluster or alias.split("_replica_")[0]
    return Fingerprint(alias=alias, role=role, cluster=cluster, items=items)


def test_reference_is_the_majority_of_shard_primaries_then_the_first() -> None:
    base = {"table t": "table", "column t.a": "integer NOT NULL"}
    odd = {**base, "column t.a": "bigint NOT NULL"}
    report = compare([
        _print("shard_0", odd),
        _print("shard_1", base),
        _print("shard_2", base),
        _print("shard_2_replica_1", base, role="replica"),
    ])
    (shards,) = report.groups
    assert shards.reference is not None and shards.reference.alias == "shard_1"
    assert shards.reason == "2 of 3 primaries share it"
    assert list(shards.drift) == ["shard_0"]
    (difference,) = shards.drift["shard_0"]
    assert difference.describe("shard_1") == (
        "~ column t.a: bigint NOT NULL (on shard_1: integer NOT NULL)"
    )
    tie = compare([_print("shard_0", odd), _print("shard_1", base)])
    assert tie.groups[0].reference.alias == "shard_0"  # a tie goes to the first shard
    assert tie.drifted == ["shard_1"]


# --- the fleet --------------------------------------------------------------------------------


def test_a_clean_fleet_is_reported_clean(fleet: LocalTopology) -> None:
    check = manage(fleet, "check_shard_schema")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no drift: 8 server(s) checked." in check.stdout
    assert "reference for shards (3 of 3 primaries share it)" in check.stdout
    for alias in ("shard_0_replica_1", "shard_1", "shard_2_replica_1", "default_replica_1"):
        line = next(x for x in check.stdout.splitlines() if x.startswith(f"{alias} "))
        assert line.rstrip().endswith("same"), line

    matrix = manage(fleet, "shard_showmigrations")
    assert matrix.returncode == 0, matrix.stdout + matrix.stderr
    assert "No drift: every database has the same migrations applied." in matrix.stdout
    header = matrix.stdout.splitlines()[0].split()
    assert header == ["MIGRATION", "default", "shard_0", "shard_1", "shard_2"]


def older_release(root: Path, upto: str) -> dict[str, str]:
    """The environment of a release whose comments migrations ended at `upto`, before they
    were squashed."""
    return comments_release(root, "older", [
        source for source in REAL_MIGRATIONS.glob("*.py")
        if source.name == "__init__.py" or (source.name[:4].isdigit() and "squashed" not in
                                            source.name and source.name <= f"{upto}~")])


def test_a_shard_partway_through_the_squashed_migrations_finishes_them_one_by_one(
        fleet: LocalTopology, tmp_path: Path) -> None:
    # The fleet's shards were built by the squashed migration. shard_2 is rebuilt as a release
    # of 0001-0002 left it; this release then applies 0003 and 0004 there, one by one.
    with fleet.admin_connect(fleet.node("shard_2")) as conn:
        conn.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public AUTHORIZATION "
                     "pg_database_owner; GRANT USAGE ON SCHEMA public TO PUBLIC")
    older = manage(fleet, "migrate_shards", "--shard", "shard_2",
                   **older_release(tmp_path, "0002"))
    assert older.returncode == 0, older.stdout + older.stderr
    assert "Applying comments.0002_page_indexes... OK" in older.stdout, older.stdout

    run = manage(fleet, "migrate_shards")
    assert run.returncode == 0, run.stdout + run.stderr
    applied = [line.split("Applying ", 1)[1].split("...")[0]
               for line in run.stdout.splitlines() if "Applying " in line]
    assert applied == ["comments.0003_thread_url_md5_uniq", "comments.0004_drop_thread_url_uniq"]

    # Built either way, the shards' schemas are the same, and so are their records.
    check = manage(fleet, "check_shard_schema")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "reference for shards (3 of 3 primaries share it)" in check.stdout
    matrix = manage(fleet, "shard_showmigrations", "comments")
    assert matrix.returncode == 0, matrix.stdout + matrix.stderr
    assert "No drift: every database has the same migrations applied." in matrix.stdout
    rows = [line.split()[0] for line in matrix.stdout.splitlines()[1:]
            if line.startswith("comments.")]
    assert rows == ["comments.0001_squashed_0004_drop_thread_url_uniq"]


def test_a_manual_alter_and_a_dropped_index_are_drift(fleet: LocalTopology) -> None:
    shard_1 = fleet.admin_connect(fleet.node("shard_1"))
    shard_2 = fleet.admin_connect(fleet.node("shard_2"))
    # Any plain (non-unique) index of the comments app: the test does not depend on its name.
    index, definition = shard_2.execute(
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' "
        "AND tablename LIKE 'comments\\_%' AND indexdef NOT LIKE 'CREATE UNIQUE%' "
        "ORDER BY indexname LIMIT 1"
    ).fetchone()
    try:
        shard_1.execute("ALTER TABLE comments_thread ADD COLUMN dba_extra integer")
        shard_2.execute(f'DROP INDEX "{index}"')

        check = manage(fleet, "check_shard_schema")
        assert check.returncode == 1, check.stdout + check.stderr
        out = check.stdout
        assert "reference for shards (1 of 3 primaries share it)" in out
        assert "Differences in shards, against shard_0:" in out
        after_alter = out.split("shard_1, shard_1_replica_1:\n", 1)[1]
        assert after_alter.splitlines()[0] == (
            "  + column comments_thread.dba_extra: integer NULL (not on shard_0)"
        )
        after_drop = out.split("shard_2, shard_2_replica_1:\n", 1)[1]
        assert after_drop.splitlines()[0] == (
            f"  - index {index}: missing (on shard_0: {definition})"
        )
        for alias in ("shard_1", "shard_1_replica_1", "shard_2", "shard_2_replica_1"):
            line = next(x for x in out.splitlines() if x.startswith(f"{alias} "))
            assert "DRIFT: 1 difference(s)" in line, line
        line = next(x for x in out.splitlines() if x.startswith("shard_0_replica_1 "))
        assert line.rstrip().endswith("same")
        assert ("schema drift on shard_1, shard_1_replica_1, shard_2, shard_2_replica_1."
                in check.stderr)
    finally:
        shard_1.execute("ALTER TABLE comments_thread DROP COLUMN IF EXISTS dba_extra")
        shard_2.execute(definition.replace("CREATE INDEX", "CREATE INDEX IF NOT EXISTS", 1))
        shard_1.close()
        shard_2.close()

    check = manage(fleet, "check_shard_schema")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no drift" in check.stdout
