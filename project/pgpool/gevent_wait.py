"""psycopg connections that wait for their socket through gevent's own watchers.

Every statement psycopg runs is a generator that yields "wait until the socket is readable
(writable)" and is resumed with what is ready. Under gevent's monkey patching psycopg waits with
`wait_poll`: a new `select.poll()` per statement, which is gevent's poll object (watchers made,
started, polled through the hub and torn down, with a timeout to wake up every 0.1 s). py-spy on
the workers serving single-row reads put 4.6% of their samples in it, and each wait switched to
the hub even when the answer was already there.

Here a wait first asks the operating system's poll, without waiting, whether the socket is
ready (after a write, the answer often is: a PgBouncer on the same host answers in
microseconds), and only otherwise parks the greenlet on one of the connection's two gevent
watchers (read, read/write), made once per connection. A socket shut down under a waiting query
(project.pgpool.deadline) wakes it: shutdown makes the socket readable, and libpq then reports
the error as it does under psycopg's own waits.

Only for waits without a timeout (psycopg uses timeouts for cancellation and for connecting,
which do not come through here): those stay psycopg's, as does every wait of a process without
gevent, whose pools make psycopg's own connections.
"""

from __future__ import annotations

import select
from typing import Any

import psycopg
from gevent import get_hub
from gevent.monkey import get_original, is_module_patched
from psycopg.abc import PQGen
from psycopg.waiting import READY_R, READY_RW, READY_W, Wait

_os_poll: Any = get_original("select", "poll")
_IN, _OUT = select.POLLIN, select.POLLOUT
# What counts as ready when poll reports an error or a hang-up: both ways, so that libpq's next
# read or write meets the error and raises it.
_BAD = select.POLLERR | select.POLLHUP | select.POLLNVAL
_POLL_EVENTS = {Wait.R: _IN, Wait.W: _OUT, Wait.RW: _IN | _OUT}
# libev's event bits: 1 read, 2 write.
_WATCHER_EVENTS = {Wait.R: 1, Wait.W: 2, Wait.RW: 3}


def _ready_now(fileno: int, wait: Wait) -> int:
    poller = _os_poll()
    poller.register(fileno, _POLL_EVENTS[wait])
    events = poller.poll(0)
    if not events:
        return 0
    revents = events[0][1]
    if revents & _BAD:
        return READY_RW
    return (READY_R if revents & _IN else 0) | (READY_W if revents & _OUT else 0)


def under_gevent() -> bool:
    """True in a process whose `select` module gevent has patched (a Gunicorn gevent worker)."""
    return bool(is_module_patched("select"))


class GeventConnection(psycopg.Connection[Any]):
    """A psycopg connection whose statements wait on gevent watchers (module docstring). The
    pools make these only under gevent (project.pgpool.base)."""

    _watchers: dict[Wait, Any] | None = None

    def wait(self, gen: PQGen[Any], interval: float = 0.1, timeout: float | None = None) -> Any:
        if timeout is not None:
            return super().wait(gen, interval, timeout)
        fileno = self.pgconn.socket
        try:
            wait = next(gen)
            while True:
                ready = _ready_now(fileno, wait)
                while not ready:
                    get_hub().wait(self._watcher(fileno, wait))
                    ready = _ready_now(fileno, wait)
                wait = gen.send(ready)
        except StopIteration as done:
            return done.value

    def _watcher(self, fileno: int, wait: Wait) -> Any:
        # One per kind of wait for the connection's life: its socket never changes (psycopg
        # reconnects through a new connection object).
        if self._watchers is None:
            self._watchers = {}
        watcher = self._watchers.get(wait)
        if watcher is None:
            watcher = get_hub().loop.io(fileno, _WATCHER_EVENTS[wait])
            self._watchers[wait] = watcher
        return watcher

    def close(self) -> None:
        watchers, self._watchers = self._watchers, None
        for watcher in (watchers or {}).values():
            watcher.close()
        super().close()
