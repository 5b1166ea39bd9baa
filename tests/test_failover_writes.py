"""Writes held, not failed, while a shard's primary is read-only or down (routers/write_hold.py),
against the service under Gunicorn on the session topology, with real faults:
- the primary made read-only (as a demoted primary is), then writable again within the bound:
  the client's write succeeds after a pause;
- the primary stopped (`pg_ctl stop -m immediate`) and started again within the bound: the
  same;
- read-only past the bound: 503 with Retry-After, naming the primary;
- a connection lost during COMMIT: never retried, 503 saying the outcome is unknown.
Meanwhile a tenant of the other shard writes as usual, and the affected tenant's reads are
served. Tests assert outcomes, never timings; what a hold took is printed (pytest -s).
"""

from __future__ import annotations

import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest

from deploy import processes as proc
from deploy.layout import pg_bin
from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from tests.api_client import SiteClient, create_site
from tests.client import Response, get, wait_until
from tests.conftest import wait_until_serving

pytestmark = pytest.mark.slow

SHARD = "shard_0"
HOLD_SECONDS = 6.0  # the service's FAILOVER_HOLD_SECONDS (the default)


class Site:
    """A site's end user with a thread: what a fault must not disturb, or must hold."""

    def __init__(self, service: ServiceProcess, topology: LocalTopology, shard: str) -> None:
        owner = create_site(service, topology, prefix="failover", shard=shard)
        assert owner.shard == shard
        self.client: SiteClient = owner.as_user("reader-writer")
        self.thread = self.client.thread()
        self.written: list[str] = []

    def post(self, body: str | None = None) -> Response:
        body = body or f"comment {uuid.uuid4().hex[:8]}"
        answer = self.client.call("POST", f"/threads/{self.thread}/comments", {"body": body},
                                  user=True)
        if answer.status == 201:
            self.written.append(body)
        return answer

    def bodies(self, *, token: bool) -> set[str]:
        """The thread's comments as a reader sees them, with or without the causal token."""
        saved = self.client.causal_token
        if not token:
            self.client.causal_token = ""
        try:
            answer = self.client.call("GET", f"/threads/{self.thread}/comments?limit=100")
        finally:
            self.client.causal_token = saved
        assert answer.status == 200, (answer.status, answer.body)
        return {item["body"] for item in answer.body["items"]}


@pytest.fixture
def sites(service: ServiceProcess, topology: LocalTopology) -> tuple[Site, Site]:
    held, other = Site(service, topology, SHARD), Site(service, topology, "shard_1")
    assert held.post().status == 201 and other.post().status == 201
    return held, other


class InBackground:
    """One request run on a thread, so the test can act while it is held."""

    def __init__(self, call: Callable[[], Response]) -> None:
        self.answer: Response | None = None
        self.seconds = 0.0
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Response]) -> None:
        started = time.monotonic()
        self.answer = call()
        self.seconds = time.monotonic() - started

    @property
    def pending(self) -> bool:
        return self._thread.is_alive()

    def result(self) -> Response:
        self._thread.join(60)
        assert self.answer is not None, "the request never answered"
        return self.answer


def unaffected_meanwhile(held: Site, other: Site, rounds: int = 3) -> None:
    """The other shard's tenant writes, and the held tenant reads (with and without its causal
    token: its replica has replayed its last write), while the held write waits."""
    for _ in range(rounds):
        answer = other.post()
        assert answer.status == 201, answer.body
        assert set(held.written) <= held.bodies(token=False)
        assert set(held.written) <= held.bodies(token=True)
        time.sleep(0.2)


@pytest.fixture
def primary_admin(topology: LocalTopology) -> Iterator[psycopg.Connection[Any]]:
    conn = topology.admin_connect(topology.node(SHARD))
    conn.autocommit = True
    # This session must still write (to lift the fault) whatever the server's default.
    conn.execute("SET default_transaction_read_only = off")
    try:
        yield conn
    finally:
        set_read_only(conn, False)
        conn.close()


def set_read_only(conn: psycopg.Connection[Any], on: bool) -> None:
    if on:
        conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
    else:
        conn.execute("ALTER SYSTEM RESET default_transaction_read_only")
    conn.execute("SELECT pg_reload_conf()")


def replica_serves(site: Site) -> bool:
    """Every worker reads the site's latest writes (its causal token) from the shard's replica:
    the replica has replayed them and each worker's replica health has seen it. Reads needing
    a write the replica does not have can only be served by the primary, which is then rightly
    a 503 while the primary is down, never a stale answer."""
    url = f"{site.client.root}/_diag/threads/{site.thread}"
    headers = {causal.HEADER: site.client.causal_token}
    answers = [get(url, headers=headers).body for _ in range(6)]  # both workers, likely
    return all(a["served_by"] == f"{SHARD}_replica_1" for a in answers)


def refuses_writes(topology: LocalTopology) -> bool:
    """A write through PgBouncer fails as a demoted primary's would (SQLSTATE 25006)."""
    dsn = f"postgresql://app@127.0.0.1:{topology.layout.pgbouncer_port}/{SHARD}"
    with psycopg.connect(dsn, autocommit=True, prepare_threshold=None) as conn:
        try:
            conn.execute("CREATE TEMP TABLE failover_probe (a int) ON COMMIT DROP")
        except psycopg.errors.ReadOnlySqlTransaction:
            return True
    return False


def test_a_write_to_a_read_only_primary_waits_until_it_is_writable(
        topology: LocalTopology, sites: tuple[Site, Site],
        primary_admin: psycopg.Connection[Any]) -> None:
    held, other = sites
    set_read_only(primary_admin, True)
    wait_until(lambda: refuses_writes(topology), timeout=10, what="shard_0 read-only")
    write = InBackground(held.post)
    unaffected_meanwhile(held, other)
    assert write.pending, "the write did not wait for the primary"
    set_read_only(primary_admin, False)
    answer = write.result()
    print(f"\n[failover] write held {write.seconds:.2f} s on a read-only primary")
    assert answer.status == 201, answer.body
    assert set(held.written) <= held.bodies(token=True)


def test_a_write_to_a_stopped_primary_waits_until_it_is_back(
        topology: LocalTopology, sites: tuple[Site, Site]) -> None:
    held, other = sites
    node = topology.node(SHARD)
    wait_until(lambda: replica_serves(held), timeout=10, what="reads served by the replica")
    topology.stop_node(SHARD, "immediate")
    try:
        write = InBackground(held.post)
        unaffected_meanwhile(held, other)
        assert write.pending, "the write did not wait for the primary"
    finally:
        # Without waiting for it (pg_ctl's -w polls slowly): the held write is what waits.
        subprocess.run(proc.as_service_user(
            [pg_bin("pg_ctl"), "start", "-D", str(node.datadir), "-l", str(node.log)]),
            check=True, capture_output=True)
    answer = write.result()
    print(f"\n[failover] write held {write.seconds:.2f} s on a stopped primary")
    wait_until_serving(topology)
    assert answer.status == 201, answer.body
    assert set(held.written) <= held.bodies(token=True)
    assert set(other.written) <= other.bodies(token=True)


def test_past_the_bound_the_write_gets_503_with_retry_after(
        topology: LocalTopology, sites: tuple[Site, Site],
        primary_admin: psycopg.Connection[Any]) -> None:
    held, other = sites
    set_read_only(primary_admin, True)
    wait_until(lambda: refuses_writes(topology), timeout=10, what="shard_0 read-only")
    write = InBackground(held.post)
    waited = time.monotonic()
    while write.pending and time.monotonic() - waited < HOLD_SECONDS + 10:
        unaffected_meanwhile(held, other, rounds=1)
    answer = write.result()
    set_read_only(primary_admin, False)
    print(f"\n[failover] write gave up after {write.seconds:.2f} s")
    assert answer.status == 503, answer.body
    assert answer.headers.get("Retry-After")
    assert answer.body["error"] == "database_unavailable"
    assert f"primary of {SHARD}" in answer.body["message"]
    assert "read-only" in answer.body["message"]
    assert not set(held.written[-1:]) - held.bodies(token=True)  # nothing half-written


# A deferred constraint trigger runs during COMMIT: this one counts its runs in a sequence
# (which a rollback does not undo) and then terminates its own backend, so the client loses
# the connection with its COMMIT on the way, as when a primary dies at that moment.
KILL_AT_COMMIT = """
CREATE SEQUENCE IF NOT EXISTS failover_commit_attempts;
-- SECURITY DEFINER: the app's role may neither use the admin's sequence nor end a backend.
CREATE OR REPLACE FUNCTION failover_kill_at_commit() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER AS $$
BEGIN
    IF NEW.{column} = '{marker}' THEN
        PERFORM nextval('failover_commit_attempts');
        PERFORM pg_terminate_backend(pg_backend_pid());
        PERFORM pg_sleep(5);  -- the termination lands here
    END IF;
    RETURN NULL;
END $$;
CREATE CONSTRAINT TRIGGER failover_kill_at_commit AFTER INSERT ON {table}
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION failover_kill_at_commit();
"""
DROP_KILL_AT_COMMIT = """
DROP TRIGGER IF EXISTS failover_kill_at_commit ON {table};
DROP FUNCTION IF EXISTS failover_kill_at_commit();
DROP SEQUENCE IF EXISTS failover_commit_attempts;
"""


@pytest.mark.parametrize(("table", "column"), [
    # a comment: committed by the service's COMMIT-and-position message (routers.causal)
    ("comments_comment", "body"),
    # a thread: committed by Django's atomic() (the backend's commit)
    ("comments_thread", "url"),
])
def test_a_write_lost_during_commit_is_not_run_again(
        sites: tuple[Site, Site], primary_admin: psycopg.Connection[Any], table: str,
        column: str) -> None:
    held, _other = sites
    marker = f"https://kill-at-commit.test/{uuid.uuid4().hex}"
    primary_admin.execute(DROP_KILL_AT_COMMIT.format(table=table))
    primary_admin.execute(KILL_AT_COMMIT.format(table=table, column=column, marker=marker))
    try:
        if table == "comments_comment":
            answer = held.post(marker)
        else:
            answer = held.client.call("PUT", "/threads", {"url": marker})
        attempts = primary_admin.execute(
            "SELECT last_value, is_called FROM failover_commit_attempts").fetchone()
    finally:
        primary_admin.execute(DROP_KILL_AT_COMMIT.format(table=table))
    assert answer.status == 503, answer.body
    assert answer.body["error"] == "write_outcome_unknown"
    assert "may or may not have been saved" in answer.body["message"]
    assert attempts == (1, True), "the write was run again after its COMMIT was lost"
    assert held.post().status == 201  # the shard serves on
