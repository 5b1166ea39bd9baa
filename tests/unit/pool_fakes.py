"""Stand-in connections for the pool's unit tests: the pool's queue and slots are under test,
so a connection only has to answer what the pool asks of it."""

from __future__ import annotations

import threading
import weakref
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg.pq import TransactionStatus


class FakePgConn:
    """The libpq handle: `consume_input` fails once the server side is gone."""

    def __init__(self) -> None:
        self.lost = False

    def consume_input(self) -> None:
        if self.lost:
            raise psycopg.OperationalError("server closed the connection unexpectedly")


class FakeConnection:
    def __init__(self, number: int) -> None:
        self.number = number
        self.pgconn = FakePgConn()
        self.info = SimpleNamespace(transaction_status=TransactionStatus.IDLE)
        self.closed = False
        self.broken = False
        self.autocommit = False
        self.rollback_fails = False
        self.rollbacks = 0
        self.executed: list[str] = []

    def lose(self) -> None:
        """The server went away (terminated backend, restarted PgBouncer)."""
        self.pgconn.lost = True

    def rollback(self) -> None:
        if self.rollback_fails:
            raise psycopg.OperationalError("consuming input failed: server closed the connection")
        self.rollbacks += 1
        self.info.transaction_status = TransactionStatus.IDLE

    def execute(self, query: str) -> None:
        if self.pgconn.lost:
            raise psycopg.OperationalError("server closed the connection unexpectedly")
        self.executed.append(query)

    def close(self) -> None:
        self.closed = True

    def __repr__(self) -> str:
        return f"<FakeConnection {self.number}>"


class Connector:
    """The pool's `connect` callable. Keeps only weak references to what it made, so a test
    can drop a connection and see it collected. `gate`, when set, holds every connect until
    the test opens it; `fail` makes the next connects raise."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.made = 0
        self.connecting = 0
        self.max_connecting = 0
        self.gate: threading.Event | None = None
        self.fail: list[BaseException] = []
        self.opened: list[weakref.ref[FakeConnection]] = []

    def __call__(self) -> Any:
        with self._lock:
            self.connecting += 1
            self.max_connecting = max(self.max_connecting, self.connecting)
            error = self.fail.pop(0) if self.fail else None
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "the test never opened the connect gate"
            if error is not None:
                raise error
            with self._lock:
                self.made += 1
                conn = FakeConnection(self.made)
                self.opened.append(weakref.ref(conn))
            return conn
        finally:
            with self._lock:
                self.connecting -= 1

    def open_now(self) -> int:
        """Connections made and neither closed nor collected."""
        with self._lock:
            return sum(1 for ref in self.opened if (c := ref()) is not None and not c.closed)
