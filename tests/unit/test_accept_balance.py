"""The shared table that evens keep-alive connections out between workers
(deploy/accept_balance.py): which worker stops accepting, and that a silent or departed worker
never makes the others stop."""

from __future__ import annotations

import copy
import os

from deploy import accept_balance
from deploy.accept_balance import SLACK, AcceptBalance


def workers(master: AcceptBalance, count: int) -> list[AcceptBalance]:
    """`count` workers' views of the master's table, as forked children would hold them."""
    views = []
    for _ in range(count):
        slot = master.claim()
        assert slot is not None
        view = copy.copy(master)  # a fork's copy of the object; the table is shared memory
        view.attach(slot)
        views.append(view)
    return views


def open_connections(view: AcceptBalance, count: int) -> None:
    for _ in range(count):
        view.opened()


def test_the_worker_past_its_share_stops_and_the_least_loaded_never_does() -> None:
    master = AcceptBalance(slots=8)
    a, b, c = workers(master, 3)
    open_connections(a, 3 + SLACK + 1)
    open_connections(b, 3)
    open_connections(c, 3 + SLACK)
    assert a.crowded()  # past the least loaded (b) by more than the slack
    assert not b.crowded()
    assert not c.crowded()  # at the slack, not past it
    c.opened()
    assert c.crowded()
    a.closed()
    assert not a.crowded()


def test_a_worker_that_stops_reporting_is_not_counted(monkeypatch) -> None:
    master = AcceptBalance(slots=4)
    busy, quiet = workers(master, 2)
    open_connections(busy, 10)
    assert busy.crowded()
    now = accept_balance.time.monotonic()
    # The quiet one hangs: past STALE_SECONDS without reporting, it no longer holds the busy
    # one back (which would leave connections waiting on a worker that never accepts).
    monkeypatch.setattr(accept_balance.time, "monotonic",
                        lambda: now + accept_balance.STALE_SECONDS + 1)
    assert not busy.crowded()
    quiet.alive()
    assert busy.crowded()


def test_a_released_slot_no_longer_counts_and_is_handed_out_again() -> None:
    master = AcceptBalance(slots=2)
    first, second = workers(master, 2)
    assert master.claim() is None  # full: a third worker would accept unbalanced
    open_connections(first, 10)
    assert first.crowded()
    master.release(second.slot)
    assert not first.crowded()  # alone: nothing to balance against
    assert master.claim() == second.slot


def test_alone_or_unattached_a_worker_always_accepts() -> None:
    master = AcceptBalance(slots=4)
    (only,) = workers(master, 1)
    open_connections(only, 100)
    assert not only.crowded()
    unattached = AcceptBalance(slots=4)
    unattached.opened()
    assert not unattached.crowded()


def test_a_forked_worker_writes_where_the_master_reads() -> None:
    master = AcceptBalance(slots=4)
    slot = master.claim()
    peer = copy.copy(master)
    peer.attach(master.claim() or 0)
    pid = os.fork()
    if pid == 0:  # the child: a worker with three connections
        child = copy.copy(master)
        child.attach(slot or 0)
        open_connections(child, 3 + SLACK)
        os._exit(0)
    os.waitpid(pid, 0)
    assert peer.crowded() is False
    peer_view = copy.copy(master)
    peer_view.slot = slot
    # The child's three plus slack, against the peer's none, seen from this process.
    assert peer_view.crowded()
