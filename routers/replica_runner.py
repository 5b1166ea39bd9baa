"""The background side of a replica health checker: its native thread, which runs a round of
checks every interval (and then the live topology's poll), and what a fork must not share.

`CheckerThread` is a mixin of `routers.replica_checker.ReplicaHealth`, which holds the state
and the checks; the thread holds it only weakly, so a dropped checker stops its own thread.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import weakref
from collections.abc import Callable
from typing import Any

from routers.native_threads import NativeEvent, NativeThread, native_lock
from routers.replica_probe import Check, Connections

logger = logging.getLogger("shardsvc.replicas")


class CheckerThread:
    """Starts, stops and forks the checks of the class it is mixed into (see its attributes)."""

    interval: float
    check_timeout: float
    # Called after each round of checks (the live topology's poll), on the checker's thread.
    after_round: Callable[[], object] | None
    _lock: Any
    _pid: int
    _inflight: dict[str, Check]
    _thread: NativeThread | None
    _thread_pid: int | None
    _res: Connections
    _finalizer: weakref.finalize

    def check_once(self) -> None:
        raise NotImplementedError

    def _give_up(self, check: Check) -> None:
        raise NotImplementedError

    def _track_forks(self) -> None:
        """Have this object forget its parent's threads and connections in a forked child."""
        _instances.add(self)

    def start(self) -> None:
        """Start the background checks in this process. Idempotent; after a fork, starts anew."""
        self._forget_if_forked()
        with self._lock:
            pid = os.getpid()
            if self._thread is not None and self._thread_pid == pid and self._thread.is_alive():
                return
            if self._res.stop.is_set():
                self._res.stop = NativeEvent()
            # The thread gets a weak reference: a dropped ReplicaHealth stops its own thread.
            thread = NativeThread(
                _check_loop,
                (weakref.ref(self), self._res.stop, pid),
                name="shardsvc-replica-health",
            )
            self._thread, self._thread_pid = thread, pid
            thread.start()

    def stop(self) -> None:
        """Stop the background checks and close the check connections."""
        self._forget_if_forked()
        with self._lock:
            thread, pid = self._thread, self._thread_pid
            self._thread = self._thread_pid = None
            self._res.stop.set()
        if thread is not None and pid == os.getpid() and not thread.is_current():
            thread.join(self.interval + self.check_timeout + 1.0)
        with self._lock:
            inflight = list(self._inflight.values())
        for check in inflight:
            assert check.thread is not None
            check.thread.join(max(0.0, check.started + self.check_timeout - time.monotonic()))
            if not check.done:
                self._give_up(check)
        # Never close a connection a check thread is still using (freeing it under a running
        # libpq call is a use-after-free); after _give_up that thread fails and closes it itself.
        with self._lock:
            busy = set(self._inflight)
        for alias, conn in list(self._res.conns.items()):
            if alias not in busy:
                self._res.conns.pop(alias, None)
                with contextlib.suppress(Exception):
                    conn.close()

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and self._thread_pid == os.getpid() and thread.is_alive()

    # ----- fork safety ----------------------------------------------------------------------------

    def _forget_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._after_fork_in_child()

    def _after_fork_in_child(self) -> None:
        """In a forked child: drop everything shared with the parent without touching it.

        Runs right after fork (os.register_at_fork), with the pid check in start() as a backstop.
        """
        # Locks may have been copied while held by a parent thread that does not exist here.
        self._lock = native_lock()
        self._pid = os.getpid()
        self._inflight = {}
        self._thread = self._thread_pid = None
        inherited, self._res = self._res, Connections()
        self._finalizer.detach()
        self._finalizer = weakref.finalize(self, self._res.close)
        inherited.abandon()


def _check_loop(ref: weakref.ref[CheckerThread], stop: NativeEvent, pid: int) -> None:
    """The background loop: holds its owner only while checking, so dropping it ends the loop."""
    while not stop.is_set():
        health = ref()
        if os.getpid() != pid or health is None:
            return
        try:
            health.check_once()
            if health.after_round is not None:
                health.after_round()
        except Exception:  # neither raises; if one ever does, keep checking
            logger.exception("replica health check failed")
        interval = health.interval
        del health
        stop.wait(interval)




_instances: weakref.WeakSet[CheckerThread] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for health in list(_instances):
        health._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
