"""A capped, fair pool of psycopg 3 connections (the per-process registry of pools is
`registry.py`, their counters `counters.py`).

Why not django-db-geventpool's pool: it counts a connection only after ``connect()`` returns (and
connecting yields under gevent, so a cold burst overshoots the cap), its waiters block forever and
newcomers jump the queue, it runs ``SELECT 1`` on every checkout and loses slots on failures.

Here every physical connection owns a *slot*. A slot is reserved under the lock before connecting,
and handed over or freed exactly once on every path: a released connection goes straight to the
oldest waiter, a freed slot lets the oldest waiter connect, and a connection whose holder is
garbage collected gives its slot back through ``weakref.finalize``.

Primitives come from ``threading`` at the time a pool (or a waiter) is created, not at import:
under gunicorn's gevent worker ``gevent.monkey.patch_all()`` has replaced them by then, so waiting
is cooperative; in a plain process they are real thread primitives. No I/O ever runs while the
lock is held, so under gevent a critical section never yields.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from itertools import count
from typing import Any, NamedTuple

import psycopg
from psycopg.pq import TransactionStatus

from .counters import count_timeout
from .errors import pool_timeout

logger = logging.getLogger("project.pgpool")

Connection = psycopg.Connection[Any]


class PoolKey(NamedTuple):
    """What a physical connection is: the same alias may point elsewhere after a settings change."""

    alias: str
    host: str
    port: str
    dbname: str
    user: str


@dataclass(frozen=True)
class PoolStats:
    """A point-in-time view for metrics; ``in_use`` includes connections still being opened."""

    size: int
    in_use: int
    idle: int
    waiting: int
    max_size: int


class _Waiter:
    """One caller queued on a full pool; granted either a connection or a free slot."""

    __slots__ = ("conn", "event", "granted")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.conn: Connection | None = None
        self.granted = False


class _CriticalSection:
    """A pool's lock held for a block (`with self._critical:`); on release, free the slots that
    finalizers queued meanwhile. One reusable object per pool rather than a generator context
    manager: a request passes four critical sections, and contextlib's wrapping cost five
    Python calls each. It holds the pool weakly, as the finalizers do: no cycle keeps a
    retired pool alive."""

    __slots__ = ("_lock", "_pool")

    def __init__(self, pool: ConnectionPool) -> None:
        self._lock = pool._lock
        self._pool = weakref.ref(pool)

    def __enter__(self) -> None:
        self._lock.acquire()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()
        pool = self._pool()
        if pool is not None:
            pool._drain_lost()


class ConnectionPool:
    """At most ``max_size`` connections (idle + in use + connecting) for one database."""

    def __init__(
        self,
        *,
        name: str,
        connect: Callable[[], Connection],
        configure: Callable[[Connection], None] | None = None,
        max_size: int = 10,
        reuse: int | None = None,
        timeout: float = 5.0,
        check_idle_after: float = 30.0,
    ) -> None:
        if max_size < 1:
            raise ValueError(f"max_size must be at least 1, got {max_size}")
        self.name = name
        self.max_size = max_size
        self.reuse = max_size if reuse is None else reuse
        self.timeout = timeout
        self.check_idle_after = check_idle_after
        self._connect = connect
        self._configure = configure
        self._lock = threading.Lock()
        self._critical = _CriticalSection(self)
        self._size = 0
        # LIFO: the most recently used connection is the least likely to need a SELECT 1.
        self._idle: deque[tuple[Connection, float]] = deque()
        self._waiters: deque[_Waiter] = deque()
        # id(conn) -> (token, finalizer) of each checked-out connection, so a return can disarm
        # it. The token tells a stale entry from a new connection that reuses a freed id.
        self._checked_out: dict[int, tuple[int, weakref.finalize[Any, Any]]] = {}
        # (id, token) of collected connections whose slots are not freed yet (see _on_lost).
        self._lost: deque[tuple[int, int]] = deque()
        self._tokens = count()
        self._retired = False

    # -- public API ----------------------------------------------------------------------------

    def getconn(self) -> Connection:
        """Check out a connection, waiting up to ``timeout`` s in FIFO order when the pool is full.

        Raises ``PoolTimeout`` when the wait runs out, or the connect error (with the slot freed).
        """
        conn, idle_since = self._acquire()
        try:
            if conn is not None and not self._still_usable(conn, idle_since):
                _close_quietly(conn)
                # The caller keeps the broken connection's slot and reconnects in it.
                conn = None
            if conn is None:
                conn = self._new_connection()
        except BaseException:
            self._release_slot()
            raise
        self._track(conn)
        return conn

    def putconn(self, conn: Connection) -> None:
        """Return a checked-out connection: rolled back and kept, handed on, or closed."""
        # Critical section: disarm the leak finalizer before the slot changes hands.
        with self._critical:
            entry = self._checked_out.pop(id(conn), None)
        if entry is None or entry[1].detach() is None:
            logger.warning("pool %r: closing a connection it did not hand out", self.name)
            _close_quietly(conn)
            return
        if not self._reset(conn):
            _close_quietly(conn)
            self._release_slot()
            return
        # Critical section: hand to the oldest waiter, keep idle, or give the slot up.
        with self._critical:
            surplus = self._dispatch_locked(conn)
        if surplus is not None:
            _close_quietly(surplus)

    def close_idle(self) -> None:
        """Close every idle connection; connections in use still come back normally."""
        # Critical section: take the idle list; the slots go with the connections.
        with self._critical:
            idle = [conn for conn, _ in self._idle]
            self._idle.clear()
            self._size -= len(idle)
        for conn in idle:
            _close_quietly(conn)

    def retire(self) -> None:
        """Stop keeping idle connections (settings changed); returns still serve waiters."""
        with self._critical:
            self._retired = True
        self.close_idle()

    def stats(self) -> PoolStats:
        # Critical section: one consistent snapshot.
        with self._critical:
            idle = len(self._idle)
            return PoolStats(
                size=self._size,
                in_use=self._size - idle,
                idle=idle,
                waiting=len(self._waiters),
                max_size=self.max_size,
            )


    # -- checkout ------------------------------------------------------------------------------

    def _acquire(self) -> tuple[Connection | None, float]:
        """Return an idle connection and when it went idle, or ``(None, 0)`` for a reserved slot."""
        # Critical section: the capacity check and the reservation must not be separated by a
        # yield, or a cold burst overshoots the cap (the geventpool defect). Newcomers queue
        # behind existing waiters even if something looks free, so nobody jumps the queue.
        with self._critical:
            if not self._waiters:
                if self._idle:
                    return self._idle.pop()
                if self._size < self.max_size:
                    self._size += 1
                    return None, 0.0
            waiter = _Waiter()
            self._waiters.append(waiter)
        try:
            waiter.event.wait(self.timeout)
        except BaseException:
            # Killed while waiting (GreenletExit, KeyboardInterrupt): pass any grant on.
            self._leave_queue(waiter, keep=False)
            raise
        if not self._leave_queue(waiter, keep=True):
            count_timeout(self.name)
            raise pool_timeout(self.name, self.max_size, self.timeout)
        # A handed-over connection was returned healthy a moment ago: no SELECT 1 needed.
        return waiter.conn, time.monotonic()

    def _leave_queue(self, waiter: _Waiter, *, keep: bool) -> bool:
        """Settle a waiter whose wait ended; True if it got a grant and keeps it."""
        surplus = None
        # Critical section: a grant may land between the wait ending and this lock. It is never
        # lost: a caller that is unwinding passes it to the next waiter (or idle, or frees the
        # slot); a caller that merely timed out keeps it, since the handoff came in time.
        with self._critical:
            if not waiter.granted:
                self._waiters.remove(waiter)
                kept = False
            elif keep:
                kept = True
            else:
                if waiter.conn is not None:
                    surplus = self._dispatch_locked(waiter.conn)
                    waiter.conn = None
                else:
                    self._free_slot_locked()
                kept = False
        if surplus is not None:
            _close_quietly(surplus)
        return kept

    def _still_usable(self, conn: Connection, idle_since: float) -> bool:
        try:
            # Two non-blocking reads, no round trip (~1 us): a backend killed by
            # pg_terminate_backend or a restarted server/PgBouncer left a FATAL message, which
            # the first read takes in, and an EOF behind it, which the second turns into an error.
            # Without this the first query of the next request fails instead.
            conn.pgconn.consume_input()
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return False
        if conn.closed or conn.broken or conn.info.transaction_status != TransactionStatus.IDLE:
            return False
        if time.monotonic() - idle_since <= self.check_idle_after:
            # A SELECT 1 per checkout costs ~15% of a one-query request; recent use is evidence.
            return True
        try:
            conn.execute("SELECT 1")
        except psycopg.Error:
            logger.info("pool %r: dropping a connection that failed its idle check", self.name)
            return False
        return True

    def _new_connection(self) -> Connection:
        conn = self._connect()
        try:
            if self._configure is not None:
                self._configure(conn)
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _track(self, conn: Connection) -> None:
        token = next(self._tokens)
        # The finalizer holds the pool weakly: a retired pool must not live as long as a leak.
        fin = weakref.finalize(conn, _on_lost, weakref.ref(self), id(conn), token)
        fin.atexit = False
        # Critical section: pairs with the pop in putconn and the cleanup in _drain_lost.
        with self._critical:
            self._checked_out[id(conn)] = (token, fin)

    # -- return --------------------------------------------------------------------------------

    def _reset(self, conn: Connection) -> bool:
        """Make a returned connection idle-clean; False means discard it."""
        if conn.closed:
            return False
        status = conn.info.transaction_status
        try:
            if status in (TransactionStatus.INTRANS, TransactionStatus.INERROR):
                conn.rollback()
            elif status != TransactionStatus.IDLE:
                # ACTIVE (a query still running, e.g. its greenlet was killed) or UNKNOWN.
                return False
            # Idle connections stay in autocommit so the idle check never opens a transaction.
            # Set only when off: psycopg's setter runs a generator through its wait loop even
            # when the value does not change (the connection is idle here, so nothing else
            # differs).
            if not conn.autocommit:
                conn.autocommit = True
        except psycopg.Error:
            logger.warning("pool %r: discarding a connection whose rollback failed", self.name)
            return False
        return True

    def _dispatch_locked(self, conn: Connection) -> Connection | None:
        """Hand a healthy connection on; return it if the caller must close it. Lock held."""
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.conn = conn
            waiter.granted = True
            waiter.event.set()
            return None
        if not self._retired and len(self._idle) < self.reuse:
            self._idle.append((conn, time.monotonic()))
            return None
        self._size -= 1
        return conn

    # -- slots ---------------------------------------------------------------------------------

    def _release_slot(self) -> None:
        # Critical section: a slot whose connection is gone passes to the oldest waiter.
        with self._critical:
            self._free_slot_locked()

    def _free_slot_locked(self) -> None:
        if self._waiters:
            waiter = self._waiters.popleft()
            waiter.granted = True
            waiter.event.set()
        else:
            self._size -= 1

    def _drain_lost(self) -> None:
        """Free the slots of collected connections; called after every lock release."""
        while self._lost:
            # Non-blocking: the finalizer may run from GC inside our own critical section.
            if not self._lock.acquire(blocking=False):
                return
            try:
                while self._lost:
                    conn_id, token = self._lost.popleft()
                    entry = self._checked_out.get(conn_id)
                    if entry is not None and entry[0] == token:
                        del self._checked_out[conn_id]
                    self._free_slot_locked()
            finally:
                self._lock.release()


def _on_lost(pool_ref: weakref.ref[ConnectionPool], conn_id: int, token: int) -> None:
    """Finalizer of a checked-out connection that was collected without being returned."""
    pool = pool_ref()
    if pool is None:
        return
    logger.warning(
        "pool %r: a checked-out connection was garbage collected without being returned; "
        "freeing its slot (close connections at the end of each request or greenlet)",
        pool.name,
    )
    # GC may run this inside a critical section of this very thread, where taking the lock
    # would deadlock. deque.append is atomic; whoever holds the lock drains it on release.
    pool._lost.append((conn_id, token))
    pool._drain_lost()


def _close_quietly(conn: Connection) -> None:
    try:
        conn.close()
    except Exception:
        logger.debug("error closing a discarded connection", exc_info=True)
