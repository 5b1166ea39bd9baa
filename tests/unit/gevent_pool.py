"""The pool under gevent, as gunicorn's gevent worker runs it: `python -m tests.unit.gevent_pool`
patches this process, runs each scenario with greenlets and prints the results as one JSON
line for tests/unit/test_pool.py to assert on."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import threading  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from project.pgpool.pool import ConnectionPool  # noqa: E402
from tests.unit.pool_fakes import Connector, FakeConnection  # noqa: E402


def wait_for(predicate: Any, what: str) -> None:
    with gevent.Timeout(10, AssertionError(f"timed out waiting for {what}")):
        while not predicate():
            gevent.sleep(0)


def stats(pool: ConnectionPool) -> dict[str, int]:
    s = pool.stats()
    return {"size": s.size, "in_use": s.in_use, "idle": s.idle, "waiting": s.waiting}


def burst() -> dict[str, Any]:
    """Connecting yields to the hub: a cap counted after connect() would overshoot here."""
    connector = Connector()
    connector.gate = threading.Event()  # gevent's, once patched
    pool = ConnectionPool(name="burst", connect=connector, max_size=4, timeout=10)
    errors: list[str] = []
    served = 0

    def caller() -> None:
        nonlocal served
        try:
            conn = pool.getconn()
        except Exception as exc:
            errors.append(repr(exc))
            return
        gevent.sleep(0)
        served += 1
        pool.putconn(conn)

    greenlets = [gevent.spawn(caller) for _ in range(40)]
    wait_for(lambda: connector.connecting == 4 and pool.stats().waiting == 36, "the burst")
    connector.gate.set()
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    return {"max_size": 4, "callers": 40, "served": served, "errors": errors,
            "max_connecting": connector.max_connecting, "made": connector.made}


def fifo() -> list[int]:
    pool = ConnectionPool(name="fifo", connect=Connector(), max_size=1, timeout=10)
    held = pool.getconn()
    served: list[int] = []

    def caller(index: int) -> None:
        conn = pool.getconn()
        served.append(index)
        gevent.sleep(0)
        pool.putconn(conn)

    greenlets = []
    for index in range(6):
        greenlets.append(gevent.spawn(caller, index))
        wait_for(lambda n=index + 1: pool.stats().waiting == n, f"caller {index} to queue")
    pool.putconn(held)
    gevent.joinall(greenlets, timeout=10, raise_error=True)
    return served


def killed_granted() -> dict[str, Any]:
    """The connection is handed to a waiter whose kill is already on its way: the waiter
    unwinds with the grant, which must pass to the next waiter, not vanish with it."""
    pool = ConnectionPool(name="killed", connect=Connector(), max_size=1, timeout=5)
    held = pool.getconn()
    got: dict[str, Any] = {"killed": None, "next": None}

    def caller(name: str) -> None:
        conn = pool.getconn()
        got[name] = conn
        if name == "killed":
            pool.putconn(conn)

    first = gevent.spawn(caller, "killed")
    wait_for(lambda: pool.stats().waiting == 1, "the first waiter")
    second = gevent.spawn(caller, "next")
    wait_for(lambda: pool.stats().waiting == 2, "the second waiter")
    # Both land before the first waiter runs again: the kill is scheduled first, then the
    # grant is made, so the waiter wakes into GreenletExit holding a connection.
    first.kill(block=False)
    pool.putconn(held)
    gevent.joinall([first, second], timeout=10)
    assert second.successful(), second.exception
    result = {"killed_got": _number(got["killed"]), "next_got": _number(got["next"]),
              "held": _number(held), "stats": stats(pool)}
    if got["next"] is not None:
        pool.putconn(got["next"])
    return result


def killed_waiting() -> dict[str, Any]:
    pool = ConnectionPool(name="left", connect=Connector(), max_size=1, timeout=5)
    held = pool.getconn()
    waiter = gevent.spawn(pool.getconn)
    wait_for(lambda: pool.stats().waiting == 1, "the waiter")
    waiter.kill(block=True)
    waiting_after_kill = pool.stats().waiting
    pool.putconn(held)  # nobody waits now: it goes idle
    return {"waiting_after_kill": waiting_after_kill, "stats_after_return": stats(pool)}


def _number(conn: FakeConnection | None) -> int | None:
    return None if conn is None else conn.number


SCENARIOS = {"burst": burst, "fifo": fifo, "killed_granted": killed_granted,
             "killed_waiting": killed_waiting}


def run_all() -> dict[str, Any]:
    """Each scenario's result, or its error: one failing scenario fails only its own test."""
    results: dict[str, Any] = {}
    for name, scenario in SCENARIOS.items():
        try:
            results[name] = {"result": scenario()}
        except Exception as exc:
            results[name] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


if __name__ == "__main__":
    print(json.dumps(run_all()))
