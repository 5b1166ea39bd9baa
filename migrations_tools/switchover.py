"""A planned switchover of one Patroni-managed cluster, with the write pause measured.

Thin over Patroni's REST API (`POST /switchover`): Patroni stops the leader cleanly, waits for
the candidate to have everything, promotes it and rejoins the old leader as its standby. While
it does, a probe writes through the cluster's pooled DSN (PgBouncer's entry for the leader, which
the leader follower re-points) every PROBE_INTERVAL; the pause reported is the longest gap
between two acknowledged probe writes, which is what a client writing through PgBouncer sees.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import psycopg

from migrations_tools.switchover_fence import member_dsn, writes_fenced
from shards import patroni, pg
from shards.shardmap import Cluster

PROBE_INTERVAL = 0.02
# A probe write needs no table: assigning a transaction id makes its commit a WAL record that
# only a primary accepts and that waits for the synchronous standby, as any write does.
PROBE_SQL = "SELECT txid_current()"


class SwitchoverError(RuntimeError):
    """The switchover cannot start or did not finish; the message says what to do."""


@dataclass
class WriteProbe:
    """Writes through one DSN in a thread until stopped; keeps the acknowledgement times."""

    dsn: str
    acked: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="switchover-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        conn: psycopg.Connection | None = None
        while not self._stop.is_set():
            try:
                if conn is None:
                    conn = pg.connect(self.dsn, connect_timeout=2)
                conn.execute(PROBE_SQL)
                self.acked.append(time.monotonic())
            except psycopg.Error as exc:
                self.errors.append(str(exc).strip().splitlines()[0] if str(exc).strip() else
                                   type(exc).__name__)
                if conn is not None:
                    conn.close()
                conn = None
            self._stop.wait(PROBE_INTERVAL)
        if conn is not None:
            conn.close()

    def acked_since(self, moment: float) -> bool:
        return bool(self.acked) and self.acked[-1] > moment

    def longest_pause(self, since: float) -> float:
        """The longest gap between acknowledged writes, counting from the last one before
        `since` (or `since` itself)."""
        before = [t for t in self.acked if t <= since]
        times = [before[-1] if before else since, *(t for t in self.acked if t > since)]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)


@dataclass(frozen=True)
class SwitchoverResult:
    cluster: str
    old_leader: str
    new_leader: str
    pause: float  # seconds: longest gap between acknowledged probe writes
    failed_writes: int
    elapsed: float
    # Wall-clock times (time.time()) of the steps, for lining them up with the servers' logs:
    # "fenced", "requested" (POST /switchover sent), "answered" (Patroni's answer),
    # "new_leader" (seen leading), "write_back" (first probe write acknowledged after it).
    marks: dict[str, float] = field(default_factory=dict)


def choose(cluster: Cluster, candidate: str | None) -> tuple[str, str | None, list[str]]:
    """(leader, candidate, member names), after checking the request against Patroni."""
    if not cluster.patroni:
        raise SwitchoverError(
            f"{cluster.name} is not managed by Patroni: its table in the topology file has no "
            "patroni = [...] REST URLs. Start the topology without --plain, or add the URLs of "
            "its members' Patroni REST API")
    try:
        members = patroni.cluster_members(list(cluster.patroni))
    except patroni.PatroniError as exc:
        raise SwitchoverError(str(exc)) from None
    names = [str(m.get("name")) for m in members]
    leaders = [str(m.get("name")) for m in members if m.get("role") in patroni.LEADER_ROLES]
    if not leaders:
        raise SwitchoverError(f"{cluster.name} has no leader now (members: {', '.join(names)}); "
                              "wait for Patroni to elect one (a failover may be under way)")
    others = [n for n in names if n != leaders[0]]
    if candidate is not None and candidate not in others:
        why = "already leads" if candidate == leaders[0] else "is no member of"
        raise SwitchoverError(
            f"{candidate!r} {why} {cluster.name}; choose --to among: "
            f"{', '.join(others) or '(none: the cluster has no other member)'}")
    if not others:
        raise SwitchoverError(f"{cluster.name} has no member to hand over to; add a replica")
    return leaders[0], candidate, names


def switchover(cluster: Cluster, *, candidate: str | None = None, timeout: float = 60.0,
               fence: bool = True) -> SwitchoverResult:
    """Hand `cluster`'s leader role to `candidate` (Patroni picks one if None) and return once a
    write through PgBouncer succeeds on the new leader. With `fence`, writes are stopped and
    flushed on the leader first (migrations_tools/switchover_fence.py)."""
    leader, candidate, _ = choose(cluster, candidate)
    fenced: contextlib.AbstractContextManager[object] = contextlib.nullcontext()
    if fence:
        members = {str(m.get("name")): m for m in patroni.cluster_members(list(cluster.patroni))}
        if leader not in members:
            raise SwitchoverError(f"{leader} left {cluster.name} while the switchover started; "
                                  "check `python -m deploy.topology status` and run it again")
        fenced = writes_fenced(member_dsn(cluster, members[leader]))
    probe = WriteProbe(cluster.primary.dsn)
    probe.start()
    marks: dict[str, float] = {}
    try:
        # A write acknowledged first: the pause is measured from a working state.
        if not _wait(lambda: bool(probe.acked), 10):
            raise SwitchoverError(
                f"no write through {cluster.name}'s pooled DSN succeeded before the switchover "
                f"({probe.errors[-1] if probe.errors else 'no answer'}); check PgBouncer")
        started = time.monotonic()
        with fenced:
            marks["fenced"] = time.time()
            new_leader = _hand_over(cluster, leader, candidate, probe, timeout, marks)
    finally:
        probe.stop()
    return SwitchoverResult(cluster=cluster.name, old_leader=leader, new_leader=new_leader,
                            pause=probe.longest_pause(started), failed_writes=len(probe.errors),
                            elapsed=time.monotonic() - started, marks=marks)


def _hand_over(cluster: Cluster, leader: str, candidate: str | None, probe: WriteProbe,
               timeout: float, marks: dict[str, float]) -> str:
    """Ask Patroni, and wait until the new leader leads and takes writes through PgBouncer;
    returns its name."""
    # Sent to the leader's own REST API: the member that receives the request wakes its HA
    # loop at once, and only the leader acts on it. Sent to another member, the leader saw it
    # at its next loop (loop_wait, 1 s): the old leader's shutdown began 0.98-1.11 s after the
    # request instead of 0.20-0.29 s.
    url = patroni.find_leader(list(cluster.patroni)) or cluster.patroni[0]
    marks["requested"] = time.time()
    answer = patroni.switchover(url, leader=leader, candidate=candidate)
    marks["answered"] = time.time()
    if answer.status != 200:
        raise SwitchoverError(
            f"Patroni refused the switchover of {cluster.name} "
            f"({answer.status or answer.error}: {answer.body}); fix what it names "
            "(`python -m deploy.topology status` shows the members) and run it again")
    urls = list(cluster.patroni)
    new_leader = leader

    def moved() -> bool:
        nonlocal new_leader
        url = patroni.find_leader(urls)
        new_leader = _name_of(url) if url is not None else leader
        return new_leader != leader

    if not _wait(moved, timeout):
        raise SwitchoverError(f"{cluster.name}: no new leader within {timeout:.0f} s; see "
                              "Patroni's log on the members")
    marks["new_leader"] = time.time()
    resumed_after = time.monotonic()
    if not _wait(lambda: probe.acked_since(resumed_after), timeout):
        raise SwitchoverError(
            f"{cluster.name}: the new leader leads, but no write through PgBouncer succeeded "
            f"within {timeout:.0f} s ({probe.errors[-1] if probe.errors else ''}); check "
            "that the leader follower runs")
    marks["write_back"] = time.time()
    # One more probe interval, so the last gap is closed by an acknowledged write.
    time.sleep(PROBE_INTERVAL * 3)
    return new_leader


def _name_of(url: str) -> str:
    """The member name behind a REST URL, from that member's own /patroni answer."""
    answer = patroni.call(url, "/patroni", timeout=2)
    if isinstance(answer.body, dict):
        name = answer.body.get("patroni", {}).get("name")
        if name:
            return str(name)
    return url


def _wait(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False
