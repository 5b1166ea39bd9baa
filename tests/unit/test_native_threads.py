"""Native threads, locks and events (routers.native_threads), here and in a gevent-patched
process of their own (tests/unit/gevent_native.py: patching this process would change every
other test). Under the service's workers: tests/test_replica_load.py."""

from __future__ import annotations

from typing import Any

import pytest

from routers.native_threads import NativeEvent, NativeThread, native_lock
from tests.unit.patched_scenarios import run_scenarios, scenario


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


@pytest.fixture(scope="module")
def gevent_results() -> dict[str, Any]:
    return run_scenarios("tests.unit.gevent_native")


def test_patched_native_thread_runs_while_a_greenlet_holds_the_loop(
        gevent_results: dict[str, Any]) -> None:
    held = scenario(gevent_results, "runs_while_the_loop_is_held")
    assert held["ticks_during_spin"] > 0
    assert held["alive_after_join"] is False


def test_patched_greenlet_waiting_on_native_objects_lets_others_run(
        gevent_results: dict[str, Any]) -> None:
    waits = scenario(gevent_results, "greenlets_run_while_one_waits")
    assert waits["event_wait_result"] is False
    assert waits["steps_during_event_wait"] > 1
    assert waits["steps_during_join"] > 1
    assert waits["joined"] is True
