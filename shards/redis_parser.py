"""redis-py's hiredis parser, with a readiness check that costs one system call under gevent.

redis-py asks a connection "is anything waiting to be read?" (`can_read(0)`) every time the
pool hands it out (to catch a connection returned with an unread answer) and for every message
a subscription drains without waiting (sites.blocked, before each credential check). Its
answer registers the socket with a new `select.poll()`, which under gevent's monkey patching
is gevent's poll: a watcher per call, started, polled through the event loop and torn down.
That was 8% of a worker's samples serving cached pages (py-spy, wrk at 64 connections).

A zero-timeout check never waits, so it may as well be the operating system's own poll: no
hub, no greenlet switch. When the socket is readable, or for any check that may wait, redis-py's
own check runs as before (it tells a peer's close from data, and a wait must yield to gevent).
Set as django-redis's ``PARSER_CLASS`` (project/settings.py).
"""

from __future__ import annotations

import select
from typing import Any

from gevent.monkey import get_original
from redis._parsers import _HiredisParser

# The unpatched poll: gevent's monkey patching replaces select.poll by its own.
_os_poll: Any = get_original("select", "poll")
_POLLIN = select.POLLIN


def _nothing_waiting(sock: Any) -> bool:
    poller = _os_poll()
    poller.register(sock, _POLLIN)  # POLLHUP and POLLERR are reported whatever is asked
    return not poller.poll(0)


class ReadyCheckParser(_HiredisParser):
    """`_HiredisParser` whose zero-timeout `can_read` polls the socket without gevent."""

    def can_read(self, timeout: float = 0) -> bool:
        if timeout == 0 and self._reader is not None and self._sock is not None:
            if self._reader.has_data():
                return True
            if _nothing_waiting(self._sock):
                return False
        result: bool = super().can_read(timeout)
        return result
