"""A deadline per request: a hung PgBouncer or database costs a request a 503, not a worker.

``RequestDeadlineMiddleware`` gives each request ``settings.REQUEST_DEADLINE`` seconds. When they
run out, a timer cuts the request's checked-out database connections (``project.pgpool.deadline``):
the query waiting on one fails at once, the view's error becomes the usual 503, and the pool
replaces the connections later. A wait that is not on a database socket (a connect in progress,
anything else) is interrupted ``BACKSTOP_SECONDS`` later by a timer raising ``DeadlineExceeded``
in the request's greenlet (what a ``gevent.Timeout`` does), an ``OperationalError`` like the rest.

It needs gevent (the Gunicorn worker class): without a running gevent hub nothing fires the timer,
so outside a gevent worker (manage.py shell, the test client) the middleware passes through.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from gevent import get_hub, getcurrent
from gevent.monkey import is_module_patched
from greenlet import greenlet as Greenlet

from project.error_map import answer_for
from project.errors import error_response
from project.pgpool.deadline import Deadline, deadline_scope
from project.pgpool.errors import DeadlineExceeded

GetResponse = Callable[[HttpRequest], HttpResponse]

# Grace after the deadline before the request greenlet itself is interrupted: cutting the sockets
# ends a database wait at once, so this only catches waits of another kind.
BACKSTOP_SECONDS = 1.0


class RequestDeadlineMiddleware:
    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        self.seconds = float(settings.REQUEST_DEADLINE)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not self.seconds or not is_module_patched("socket"):
            return self.get_response(request)
        deadline = Deadline(self.seconds)
        loop = get_hub().loop
        timer = loop.timer(self.seconds)
        timer.start(deadline.expire)
        # The backstop: what a gevent.Timeout with deadline.error() would do (a timer that
        # throws into this greenlet, started with the time updated, closed on the way out),
        # without building the Timeout, its context manager and the error on every request.
        backstop = loop.timer(self.seconds + BACKSTOP_SECONDS, priority=-1)
        backstop.start(_interrupt, getcurrent(), deadline, update=True)
        try:
            with deadline_scope(deadline):
                return self.get_response(request)
        except DeadlineExceeded as exc:
            # Inner layers answer their own errors; this is one raised between them.
            return error_response(answer_for(exc, request.path))
        finally:
            backstop.close()
            timer.close()


def _interrupt(request_greenlet: Greenlet, deadline: Deadline) -> None:
    """The backstop's callback (in the hub): raise DeadlineExceeded in the request's greenlet,
    which is waiting on something other than a database socket."""
    request_greenlet.throw(deadline.error())
