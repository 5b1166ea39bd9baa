"""Each replica of the harness topology streams from its primary and refuses writes."""

from __future__ import annotations

import pytest
from django.db import InternalError, connections

from deploy.topology import LocalTopology

pytestmark = pytest.mark.usefixtures("django_db")


def replica_aliases(topology: LocalTopology) -> list[str]:
    return [n.alias for n in topology.layout.nodes() if n.role == "replica"]


def test_every_replica_streams_from_its_primary(topology: LocalTopology, admin) -> None:
    for node in topology.layout.nodes():
        if node.role != "primary":
            continue
        expected = {n.alias for n in topology.layout.nodes()
                    if n.cluster == node.cluster and n.role == "replica"}
        rows = admin(node.alias).execute(
            "SELECT application_name, state FROM pg_stat_replication"
        ).fetchall()
        assert {name for name, state in rows if state == "streaming"} == expected


def test_replicas_are_in_recovery_through_pgbouncer(topology: LocalTopology) -> None:
    for alias in replica_aliases(topology):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT pg_is_in_recovery()")
            assert cursor.fetchone() == (True,)
    with connections["shard_0"].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        assert cursor.fetchone() == (False,)


@pytest.mark.parametrize("statement", [
    "CREATE TABLE replica_write_probe (id int)",
    "INSERT INTO django_migrations (app, name, applied) VALUES ('x', 'y', now())",
])
def test_replica_rejects_writes_with_read_only_error(topology: LocalTopology,
                                                     statement: str) -> None:
    for alias in replica_aliases(topology):
        if alias.startswith("shard") and "django_migrations" in statement:
            continue  # shards hold no Django tables yet
        with pytest.raises(InternalError, match="read-only transaction"), \
                connections[alias].cursor() as cursor:
            cursor.execute(statement)
        connections[alias].close()


def test_write_on_primary_reaches_its_replica(topology: LocalTopology, admin) -> None:
    from tests.client import wait_until

    primary = admin("shard_1")
    # One transaction: the replica must never see the table without its grant.
    with primary.transaction():
        primary.execute("CREATE TABLE IF NOT EXISTS replication_probe (v text)")
        primary.execute("GRANT SELECT ON replication_probe TO app")
        primary.execute("INSERT INTO replication_probe VALUES ('hello')")
    try:
        def seen() -> bool:
            with connections["shard_1_replica_1"].cursor() as cursor:
                cursor.execute("SELECT to_regclass('replication_probe') IS NOT NULL")
                if not cursor.fetchone()[0]:
                    return False
                cursor.execute("SELECT count(*) FROM replication_probe WHERE v = 'hello'")
                return cursor.fetchone()[0] == 1

        wait_until(seen, timeout=10, what="the row on the replica")
    finally:
        primary.execute("DROP TABLE replication_probe")
        connections["shard_1_replica_1"].close()
