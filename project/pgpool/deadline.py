"""A deadline for the database work of one request (or any block of code).

Server-side timeouts need a server that answers. A paused PgBouncer or database (SIGSTOP, a hung
host) keeps its sockets open: the kernel still acknowledges what the client sends, so neither
libpq's ``tcp_user_timeout`` (which needs unacknowledged data) nor TCP keepalives (answered by
the kernel, and minutes apart) notice, and a query waits for its answer forever.

So the code that owns a deadline calls ``expire()`` when it runs out (``project.deadline`` does
it from a timer), and the backend, which registers with the current deadline every connection
it checks out, shuts those sockets down. A query waiting on one wakes at once with the driver's
"server closed the connection" error, an ``OperationalError`` every layer already turns into a
503; the broken connection is discarded when it goes back to the pool, which opens a new one on
demand later. After expiry, checking out another connection fails at once with
``DeadlineExceeded``.
"""

from __future__ import annotations

import logging
import socket
import time
from contextvars import ContextVar
from typing import Any

from .errors import DeadlineExceeded

logger = logging.getLogger("project.pgpool")

_current: ContextVar[Deadline | None] = ContextVar("pgpool_deadline", default=None)


class Deadline:
    """``seconds`` from now; tracks the connections checked out under it."""

    def __init__(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError(f"a deadline must be positive, got {seconds}")
        self.seconds = seconds
        self.expires_at = time.monotonic() + seconds
        self.expired = False
        # id -> connection; held strongly only while checked out (untrack on return).
        self._held: dict[int, Any] = {}

    def remaining(self) -> float:
        return max(0.0, self.expires_at - time.monotonic())

    def check(self) -> None:
        if self.expired or self.remaining() <= 0:
            raise self.error()

    def error(self) -> DeadlineExceeded:
        return DeadlineExceeded(
            f"the request ran past its deadline of {self.seconds:g} s waiting for the "
            "database (SHARDSVC_REQUEST_DEADLINE); retry shortly"
        )

    def track(self, conn: Any) -> None:
        self._held[id(conn)] = conn
        if self.expired:
            _shutdown(conn)

    def untrack(self, conn: Any) -> None:
        self._held.pop(id(conn), None)

    def expire(self) -> None:
        """Mark the deadline passed and cut every connection still checked out under it.

        Safe to call from a timer callback: it only makes non-blocking system calls."""
        self.expired = True
        held = list(self._held.values())
        if held:
            logger.warning("request deadline of %g s passed: closing %d database connection(s)",
                           self.seconds, len(held))
        for conn in held:
            _shutdown(conn)


def current_deadline() -> Deadline | None:
    return _current.get()


class deadline_scope:  # named as the function it replaced: `with deadline_scope(...)`
    """Make ``deadline`` the current one for the block (per greenlet under gevent). A class,
    not a generator context manager: every request enters one."""

    __slots__ = ("_token", "deadline")

    def __init__(self, deadline: Deadline) -> None:
        self.deadline = deadline

    def __enter__(self) -> Deadline:
        self._token = _current.set(self.deadline)
        return self.deadline

    def __exit__(self, *exc_info: object) -> None:
        _current.reset(self._token)


def _shutdown(conn: Any) -> None:
    """Shut the connection's socket down under libpq's feet, waking any wait on it."""
    try:
        fd = conn.pgconn.socket
    except Exception:
        return  # already closed
    try:
        # A duplicate descriptor: shutdown acts on the socket, close only on the duplicate, so
        # libpq's own descriptor stays valid until the pool closes the connection.
        with socket.socket(fileno=socket.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        logger.debug("shutting down a database socket failed", exc_info=True)
