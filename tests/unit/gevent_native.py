"""Native threads in a gevent-patched process, as gunicorn's gevent worker runs them:
`python -m tests.unit.gevent_native` patches this process, runs each scenario and prints the
results as one JSON line for tests/unit/test_native_threads.py to assert on."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from routers.native_threads import NativeEvent, NativeThread  # noqa: E402


def runs_while_the_loop_is_held() -> dict[str, Any]:
    """A greenlet spins without yielding; the native thread keeps counting meanwhile."""
    stop = NativeEvent()
    ticks = [0]

    def count() -> None:
        while not stop.wait(0.001):  # a native wait: no gevent hub in this thread
            ticks[0] += 1

    thread = NativeThread(count, name="counter")
    thread.start()
    while ticks[0] == 0:
        gevent.sleep(0.001)
    before = ticks[0]
    until = time.monotonic() + 0.3
    while time.monotonic() < until:  # holds the loop: no greenlet switch in here
        pass
    during = ticks[0] - before
    stop.set()
    thread.join(5)
    return {"ticks_during_spin": during, "alive_after_join": thread.is_alive()}


def greenlets_run_while_one_waits() -> dict[str, Any]:
    """A greenlet waiting on a native event or thread does not stop the worker's other
    greenlets (it polls, yielding to the loop)."""
    event = NativeEvent()
    gate = NativeEvent()
    thread = NativeThread(lambda: gate.wait(10), name="gated")
    thread.start()
    steps = [0]

    def step() -> None:
        while not event.is_set():
            steps[0] += 1
            gevent.sleep(0.005)

    stepper = gevent.spawn(step)
    gevent.sleep(0)
    waited = event.wait(0.1)  # never set: times out
    during_event_wait = steps[0]
    gevent.spawn_later(0.1, gate.set)
    thread.join(5)
    during_join = steps[0] - during_event_wait
    event.set()
    stepper.join(5)
    return {"event_wait_result": waited, "steps_during_event_wait": during_event_wait,
            "steps_during_join": during_join, "joined": not thread.is_alive()}


def run_all() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for scenario in (runs_while_the_loop_is_held, greenlets_run_while_one_waits):
        try:
            results[scenario.__name__] = {"result": scenario()}
        except Exception as exc:  # reported, so the test names the scenario that failed
            results[scenario.__name__] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


if __name__ == "__main__":
    print(json.dumps(run_all()))
