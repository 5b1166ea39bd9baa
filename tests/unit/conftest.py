"""The fast tier: pure logic, no PostgreSQL, PgBouncer or Redis server.

Every test under tests/unit gets the `unit` marker, so `pytest -m unit` selects the same tests
as `pytest tests/unit`. tests/conftest.py still sets Django up (settings read the session's
topology file, which it writes without starting anything); no test here asks for its `topology`
fixture, and `no_server` below fails any test here that tries to connect to one.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.unit)


@pytest.fixture(autouse=True)
def no_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Fail any test of this tier that tries to reach a server: sockets (Redis, HTTP) and
    libpq connections (PostgreSQL, PgBouncer) are refused and the attempt is reported, even
    when the code under test swallows the error."""
    attempts: list[str] = []

    def refuse_socket(self: socket.socket, address: Any) -> None:
        attempts.append(f"socket connect to {address!r}")
        raise ConnectionRefusedError("the fast tier reaches no server")

    def refuse_libpq(conninfo: str = "", **kwargs: Any) -> None:
        attempts.append(f"psycopg connect to {conninfo!r} {kwargs}")
        raise psycopg.OperationalError("the fast tier reaches no server")

    class RefusedPGconn:
        """libpq's own connect (the replica checker's blocking probes) refused too."""

        @staticmethod
        def connect(conninfo: bytes) -> None:
            refuse_libpq(conninfo.decode(errors="replace"))

        connect_start = connect

    monkeypatch.setattr(socket.socket, "connect", refuse_socket)
    monkeypatch.setattr(psycopg.pq, "PGconn", RefusedPGconn)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse_socket)
    # psycopg.connect is bound once at import: both names, for callers of either.
    monkeypatch.setattr(psycopg, "connect", refuse_libpq)
    monkeypatch.setattr(psycopg.Connection, "connect", staticmethod(refuse_libpq))
    yield
    assert not attempts, f"a fast-tier test tried to reach a server: {attempts}"
