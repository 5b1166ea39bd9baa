"""Real OS threads, locks and events, also inside a gevent-patched worker.

Under Gunicorn's gevent worker `monkey.patch_all()` turns `threading.Thread` into a greenlet and
`threading.Lock` into a gevent lock. A "thread" then runs only when the worker's loop gets round
to it, so whatever it measures (a replica check's timeout) includes the loop's own backlog: with
CPU-heavy requests queued, checks "timed out" after 1 s while the loop had not yet run them, and
giving up shut their sockets. The replica checker therefore runs on threads started with the
original `_thread.start_new_thread` (`gevent.monkey.get_original` returns it whether or not the
process is patched).

Why a native thread in each worker, rather than
- gevent's threadpool: its functions run on native threads, but results come back through the
  hub, i.e. when the saturated loop gets to them, which is the delay to avoid;
- one checker process per host (started by the Gunicorn master) publishing states in a shared
  file or in Redis: workers would still need a channel, a format and a freshness rule, Redis
  would be I/O on the read path, and the states a request marks failed (`mark_failed`) would
  have to travel back; a thread shares the worker's memory, so reads stay dict lookups;
- primary-side figures alone (`pg_stat_replication`): they say nothing about whether this
  worker can reach the replica.
A native thread needs the GIL only to run Python: libpq's blocking calls release it, and
CPython hands it to a waiting thread every `sys.getswitchinterval()` (5 ms) even while a
greenlet spins, so a check is late by milliseconds, not by the loop's backlog.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from gevent.monkey import get_original, is_module_patched

_start_new_thread: Callable[..., int] = get_original("_thread", "start_new_thread")
_allocate_lock: Callable[[], Any] = get_original("_thread", "allocate_lock")
_get_ident: Callable[[], int] = get_original("_thread", "get_ident")

# Idents of the threads started here: they wait on native locks directly.
_ours: set[int] = set()
# How often a greenlet polls a native lock (it must not block the worker's loop on it).
_POLL_SECONDS = 0.002


def native_lock() -> Any:
    """A real lock (never a gevent one): hold it only for a few statements, never across I/O,
    since a greenlet that waits on it stops its whole worker meanwhile."""
    return _allocate_lock()


def _wait(lock: Any, timeout: float | None) -> bool:
    """Acquire `lock` within `timeout` seconds (None: no limit); True if acquired.

    A greenlet of a patched worker polls, yielding to the loop between tries; a native thread
    (one of ours, or any thread of an unpatched process) blocks on the lock itself.
    """
    if not is_module_patched("threading") or _get_ident() in _ours:
        return bool(lock.acquire(True, -1 if timeout is None else max(0.0, timeout)))
    deadline = None if timeout is None else time.monotonic() + timeout
    while not lock.acquire(False):
        left = _POLL_SECONDS if deadline is None else deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(_POLL_SECONDS, left))  # gevent.sleep here: patched
    return True


def _nothing() -> None:
    pass


class NativeEvent:
    """`threading.Event` on native locks: set from any thread or greenlet, waited on by either."""

    def __init__(self) -> None:
        self._flag = False
        self._guard = _allocate_lock()
        self._gate = _allocate_lock()
        self._gate.acquire()  # released (open) once set

    def is_set(self) -> bool:
        return self._flag

    def set(self) -> None:
        with self._guard:
            if not self._flag:
                self._flag = True
                self._gate.release()

    def wait(self, timeout: float | None = None) -> bool:
        if self._flag:
            return True
        if _wait(self._gate, timeout):
            self._gate.release()  # leave it open for the other waiters
        return self._flag


class NativeThread:
    """A daemon OS thread running `target(*args)`, with `join(timeout)` and `is_alive()`.

    Like every thread it does not survive a fork: the owner checks its pid (the object is copied
    into the child, looking alive).
    """

    def __init__(self, target: Callable[..., object], args: tuple[Any, ...] = (),
                 *, name: str = "") -> None:
        self.name = name
        self.ident: int | None = None
        self._target = target
        self._args = args
        self._started = False
        self._finished = False
        self._done = _allocate_lock()

    def __repr__(self) -> str:
        state = "finished" if self._finished else "running" if self._started else "new"
        return f"<NativeThread {self.name!r} {state}>"

    def start(self) -> None:
        if self._started:
            raise RuntimeError(f"thread {self.name!r} was already started")
        self._started = True
        self._done.acquire()
        _start_new_thread(self._run, ())

    def _run(self) -> None:
        ident = self.ident = _get_ident()
        _ours.add(ident)
        try:
            self._target(*self._args)
        finally:
            # As threading.Thread does: a finished thread keeps no reference to what it ran,
            # so a cycle through it (a check holding its thread) cannot keep its owner alive.
            self._target, self._args = _nothing, ()
            _ours.discard(ident)
            self._finished = True
            self._done.release()

    def join(self, timeout: float | None = None) -> None:
        if not self._started:
            raise RuntimeError(f"cannot join thread {self.name!r} before it is started")
        if _wait(self._done, timeout):
            self._done.release()

    def is_alive(self) -> bool:
        return self._started and not self._finished

    def is_current(self) -> bool:
        """True when called from this thread."""
        return self.ident is not None and self.ident == _get_ident() and self.is_alive()


os.register_at_fork(after_in_child=_ours.clear)
