"""The request deadline under gevent, as gunicorn's gevent worker runs it: `python -m
tests.unit.gevent_deadline` patches this process, runs each scenario through
project.deadline.RequestDeadlineMiddleware and prints the results as one JSON line for
tests/unit/test_deadline_gevent.py. Nothing here touches a database: the waits are gevent
sleeps, which only the backstop can end."""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import os  # noqa: E402
from typing import Any  # noqa: E402

import django  # noqa: E402
import gevent  # noqa: E402

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django.setup()

from django.http import HttpRequest, HttpResponse, JsonResponse  # noqa: E402
from django.test import RequestFactory  # noqa: E402

from project import deadline as request_deadline  # noqa: E402
from project.pgpool.deadline import current_deadline  # noqa: E402

DEADLINE = 0.2


def _middleware(view: Any) -> request_deadline.RequestDeadlineMiddleware:
    middleware = request_deadline.RequestDeadlineMiddleware(view)
    middleware.seconds = DEADLINE
    return middleware


def backstop() -> dict[str, Any]:
    """A wait on no database socket outlives the deadline: the backstop ends it with a 503."""
    request_deadline.BACKSTOP_SECONDS = 0.1

    def hangs(request: HttpRequest) -> HttpResponse:
        gevent.sleep(30)
        return JsonResponse({"slept": True})

    response = _middleware(hangs)(RequestFactory().get("/api/sites/x/threads/1"))
    return {"status": response.status_code, "body": json.loads(response.content)}


def finished_in_time() -> dict[str, Any]:
    """A request that answers in time is never interrupted later, and its deadline was the
    current one only while it ran."""
    seen: list[bool] = []

    def quick(request: HttpRequest) -> HttpResponse:
        seen.append(current_deadline() is not None)
        return JsonResponse({"ok": True})

    response = _middleware(quick)(RequestFactory().get("/api/sites/x/threads/1"))
    # Past the deadline and the backstop: a timer left running would throw in here.
    gevent.sleep(DEADLINE + request_deadline.BACKSTOP_SECONDS + 0.3)
    return {"status": response.status_code, "deadline_inside": seen,
            "deadline_after": current_deadline() is not None}


def run_all() -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name, scenario in (("backstop", backstop), ("finished_in_time", finished_in_time)):
        try:
            results[name] = {"result": scenario()}
        except BaseException as exc:  # report it: the test asserts on the JSON line
            results[name] = {"error": repr(exc)}
    return results


if __name__ == "__main__":
    print(json.dumps(run_all()))
