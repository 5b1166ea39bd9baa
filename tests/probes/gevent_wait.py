"""Run as a subprocess under gevent (as in a Gunicorn gevent worker): psycopg connections that
wait through gevent's watchers (project/pgpool/gevent_wait.py), against a real server.

    python -m tests.probes.gevent_wait DSN

Prints one JSON line: what each scenario saw.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import socket  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import psycopg  # noqa: E402

from project.pgpool.base import _connection_class  # noqa: E402
from project.pgpool.gevent_wait import GeventConnection  # noqa: E402


def connect(dsn: str) -> GeventConnection:
    return GeventConnection.connect(dsn, autocommit=True)


def others_run_meanwhile(dsn: str) -> dict[str, Any]:
    """A greenlet waiting on a slow statement lets the others run their statements."""
    slow, quick = connect(dsn), connect(dsn)
    seen: dict[str, Any] = {"quick_done_while_slow_waited": None}
    slow_done = gevent.event.Event()

    def run_slow() -> None:
        slow.execute("SELECT pg_sleep(0.5)")
        slow_done.set()

    def run_quick() -> None:
        answers = [quick.execute("SELECT %s::int", (n,)).fetchone()[0] for n in range(5)]
        seen["quick_answers"] = answers
        seen["quick_done_while_slow_waited"] = not slow_done.is_set()

    gevent.joinall([gevent.spawn(run_slow), gevent.spawn(run_quick)], raise_error=True)
    slow.close()
    quick.close()
    return seen


def large_statements(dsn: str) -> dict[str, Any]:
    """Many reads for one answer, and a statement too large for one write to the socket."""
    conn = connect(dsn)
    rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g").fetchall()
    text = "y" * 8_000_000
    echoed = conn.execute("SELECT length(%s)", (text,)).fetchone()[0]
    kinds = sorted(kind.name for kind in (conn._watchers or {}))
    conn.close()
    return {"rows": len(rows), "last": rows[-1][0], "echoed": echoed, "watchers": kinds,
            "watchers_after_close": conn._watchers}


def socket_shut_down_under_a_wait(dsn: str) -> dict[str, Any]:
    """What project.pgpool.deadline does to a connection past its deadline: the wait ends."""
    conn = connect(dsn)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            conn.execute("SELECT pg_sleep(30)")
            outcome["finished"] = True
        except psycopg.OperationalError as exc:
            outcome["error"] = type(exc).__name__

    waiter = gevent.spawn(run)
    gevent.sleep(0.2)
    sock = socket.socket(fileno=conn.pgconn.socket)  # a handle on the same socket
    try:
        sock.shutdown(socket.SHUT_RDWR)
    finally:
        sock.detach()
    waiter.join(timeout=20)
    outcome["ended"] = waiter.dead
    return outcome


def main() -> None:
    dsn = sys.argv[1]
    results: dict[str, Any] = {"pool_class": _connection_class().__name__}
    for name, run in [("others_run_meanwhile", others_run_meanwhile),
                      ("large_statements", large_statements),
                      ("socket_shut_down", socket_shut_down_under_a_wait)]:
        try:
            results[name] = run(dsn)
        except Exception as exc:  # reported, so that the test names what failed
            results[name] = {"exception": repr(exc)}
    print(json.dumps(results))


if __name__ == "__main__":
    main()
