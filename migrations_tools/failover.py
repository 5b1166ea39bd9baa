"""Telling a failover from other errors, and waiting for the new leader.

Under Patroni a shard's `direct_dsn` is multi-host with `target_session_attrs=read-write`, so a new
connection reaches whichever member leads now. A session opened before a failover does not follow:
it fails, with a lost connection (`kill -9` of the postmaster), an administrator shutdown (a
switchover's demote) or, if it survives a demote, "read-only transaction". Long-running DBA work
(moves, migrations) therefore recognises those errors, waits for a writable leader, and tells
who leads by the server's identity: its system identifier, its timeline (a promotion starts a new
one) and its address.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import psycopg

from migrations_tools.safety import error_chain
from project.db_faults import unavailable_reason
from shards import pg

# How long to wait for a writable leader: Patroni promotes in 2-4 s after a postmaster is killed,
# and after `ttl` (20 s) when the whole member is lost; some margin on a busy host.
LEADER_WAIT = 45.0


class NoLeader(RuntimeError):
    """No member of a cluster accepted writes within the wait."""


def connection_lost(exc: BaseException) -> bool:
    """Whether `exc` (or what caused it, or what it was raised while handling) is a session lost
    to its server going away or being demoted, rather than an error of the work itself: the
    service's own classifier (`project.db_faults`: unreachable or read-only), plus psycopg's
    InterfaceError for a session already closed under a long-running command."""
    return any(isinstance(item, psycopg.InterfaceError) or unavailable_reason(item) is not None
               for item in error_chain(exc))


@dataclass(frozen=True)
class ServerIdentity:
    system_id: int
    timeline: int
    server: str  # address:port of the member that answered

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ServerIdentity:
        return cls(int(data["system_id"]), int(data["timeline"]), str(data["server"]))

    def describe(self) -> str:
        return f"{self.server}, timeline {self.timeline}"


def identity(conn: psycopg.Connection[Any]) -> ServerIdentity:
    """Who `conn` talks to. The timeline is read from the current WAL file's name: the
    checkpoint's timeline (pg_control_checkpoint) still shows the old one for a while after a
    promotion, until the end-of-recovery checkpoint completes."""
    system_id, timeline, server = pg.fetch_row(
        conn,
        "SELECT (SELECT system_identifier FROM pg_control_system()), "
        "('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int, "
        "coalesce(host(inet_server_addr()), 'local') || ':' || inet_server_port()",
    )
    return ServerIdentity(int(system_id), int(timeline), str(server))


def wait_for_leader(dsn: str, *, what: str, timeout: float = LEADER_WAIT,
                    poll: float = 0.5) -> ServerIdentity:
    """The identity of the writable server `dsn` reaches, once one answers; `NoLeader` after
    `timeout`. A demoted or recovering member is skipped by the DSN's target_session_attrs and
    checked again here (a plain DSN has no such attribute)."""
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        try:
            with pg.connect(dsn, connect_timeout=2,
                            application_name="shardsvc leader wait") as conn:
                if not pg.fetch_value(conn, "SELECT pg_is_in_recovery()"):
                    return identity(conn)
                last = "the server it reaches is in recovery"
        except psycopg.Error as exc:
            last = first_line(exc)
        if time.monotonic() + poll > deadline:
            raise NoLeader(f"{what} has no writable primary after {timeout:.0f} s ({last})")
        time.sleep(poll)


def await_new_leader(what: str, dsn: str, exc: BaseException, *, say: Callable[[str], None],
                     rerun: str) -> ServerIdentity:
    """After a session to `what` was lost (`exc`), wait for the leader `dsn` reaches now and
    say so; `NoLeader`, with what to do, if none comes."""
    say(f"lost its primary ({first_line(exc)}); waiting for a new leader")
    try:
        leader = wait_for_leader(dsn, what=what)
    except NoLeader as missing:
        raise NoLeader(f"lost its primary mid-run and {missing}; what was committed before "
                       f"stays. {rerun[:1].upper()}{rerun[1:]} once it has a leader") from exc
    say(f"reconnected to the new leader ({leader.describe()}): carrying on")
    return leader


def first_line(exc: BaseException) -> str:
    """The first line of an error's text (psycopg's often run to several), or its class."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
