"""Native threads, locks and events (routers.native_threads). The patched case (a greenlet
spinning while a native thread checks) runs in the integration tier: tests/test_replica_load.py."""

from __future__ import annotations

import pytest

from routers.native_threads import NativeEvent, NativeThread, native_lock


def test_thread_runs_joins_and_reports_liveness() -> None:
    gate = NativeEvent()
    seen: list[bool] = []
    thread = NativeThread(lambda: seen.append(gate.wait(10)), name="t")
    with pytest.raises(RuntimeError, match="before it is started"):
        thread.join()
    thread.start()
    thread.join(0.01)
    assert thread.is_alive() and not thread.is_current()
    gate.set()
    thread.join(10)
    assert not thread.is_alive() and seen == [True]
    with pytest.raises(RuntimeError, match="already started"):
        thread.start()


def test_event_wait_times_out_then_stays_open_for_every_waiter() -> None:
    event = NativeEvent()
    assert not event.wait(0.01) and not event.is_set()
    event.set()
    event.set()  # idempotent
    assert event.is_set() and event.wait(0) and event.wait(None)


def test_a_thread_knows_it_is_current() -> None:
    answers: list[bool] = []
    holder: list[NativeThread] = []
    thread = NativeThread(lambda: answers.append(holder[0].is_current()))
    holder.append(thread)
    thread.start()
    thread.join(10)
    assert answers == [True]


def test_native_lock_times_out() -> None:
    lock = native_lock()
    assert lock.acquire()
    assert not lock.acquire(True, 0.01)
    lock.release()
