"""One process of request_cost: N requests of one kind, one after another, through a WSGI
application called in this process (the service's, or the plain baseline's), no server and no
concurrency, so what it reports does not depend on the machine's load:

    python -m tests.benchmarks.request_cost_runner <service|plain> <row|cached|built|write> <n> \\
        <profile|cpu|callgrind> <site.json>

- profile: Python function calls, psycopg's waits on its connections and Redis commands per
  request, from cProfile (with REQUEST_COST_PSTATS=PREFIX set, the profile is also written to
  PREFIX.<target>.<kind> for pstats);
- cpu: microseconds of this process's CPU per request (load makes it noisier, not wrong);
- callgrind: under `valgrind --tool=callgrind --instr-atstart=no`, it prints "ready", waits for a
  line on stdin (the driver turns instrumentation on), runs the requests, prints "done" and waits
  again (instrumentation off): the counts are of the requests alone.

Each run first makes 200 requests of its kind untimed (caches, pools, lazy imports). The
environment says which topology (the driver sets it). Not a test: pytest does not collect it.
"""

# As the Gunicorn worker: patched before anything imports socket or threading.
from gevent import monkey

monkey.patch_all()

import base64  # noqa: E402
import cProfile  # noqa: E402
import io  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import pstats  # noqa: E402
import select  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

WARM_UP = 200
Wsgi = Callable[[dict[str, Any], Callable[..., Any]], Any]


def environ(method: str, path: str, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """What Gunicorn hands the application for this request."""
    route, _, query = path.partition("?")
    env: dict[str, Any] = {
        "REQUEST_METHOD": method, "PATH_INFO": route, "QUERY_STRING": query, "RAW_URI": path,
        "SCRIPT_NAME": "", "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1", "REMOTE_ADDR": "127.0.0.1", "REMOTE_PORT": "50000",
        "HTTP_HOST": "127.0.0.1:8000", "HTTP_USER_AGENT": "request_cost",
        "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0), "wsgi.multithread": True, "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        env[key if key == "CONTENT_TYPE" else f"HTTP_{key}"] = value
    if body:
        env["CONTENT_LENGTH"] = str(len(body))
    return env


class Client:
    def __init__(self, app: Wsgi) -> None:
        self.app = app
        self.statuses: dict[str, int] = {}

    def call(self, method: str, path: str, headers: dict[str, str],
             body: bytes = b"") -> tuple[str, bytes]:
        answer: dict[str, Any] = {}

        def start_response(status: str, _headers: Any, _exc_info: Any = None) -> None:
            answer["status"] = status

        result = self.app(environ(method, path, headers, body), start_response)
        data = b"".join(result)
        if hasattr(result, "close"):
            result.close()  # Django's request_finished: connections go back to the pool
        status = answer["status"].split()[0]
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, data


def setup(target: str, site: dict[str, Any]) -> tuple[Client, str, dict[str, str]]:
    if target == "service":
        from project import metrics
        from project.wsgi import application, lean_request_signals

        lean_request_signals()  # as Gunicorn's post_worker_init does in each worker

        # Per second, not per request: each worker samples its gauges once a second, which
        # would be charged to the requests of a run that valgrind slows down a hundredfold.
        metrics.SAMPLE_INTERVAL = 3600.0

        client = Client(application)
        base = f"/api/sites/{site['slug']}/threads"
        key = {"X-Api-Key": site["api_key"]}
        status, body = client.call(
            "POST", f"/api/sites/{site['slug']}/users/token",
            {**key, "Content-Type": "application/json"},
            json.dumps({"user_id": "request-cost", "name": "Request Cost"}).encode())
        if status != "200":
            raise SystemExit(f"POST users/token answered {status}: {body[:300]!r}")
        return client, base, {**key, "X-User-Token": json.loads(body)["token"]}
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.benchmarks.plain_django.settings")
    from tests.benchmarks.plain_django.wsgi import application as plain

    return Client(plain), f"/sites/{site['tenant_id']}/threads", {}


def request_maker(target: str, kind: str,
                  site: dict[str, Any]) -> tuple[Client, Callable[[int], Any]]:
    client, base, headers = setup(target, site)
    ids = [t["id"] for t in site["threads"]]
    reads, writes = ids[: len(ids) // 2], ids[len(ids) // 2:]  # as bench_perf: pages stay cached
    read_headers = {k: v for k, v in headers.items() if k != "X-User-Token"}
    run = time.time_ns() // 1000 % 1_000_000  # built pages: this run's cursors are its own
    asked = itertools.count()
    write_headers = {**headers, "Content-Type": "application/json"}

    def one(i: int) -> Any:
        if kind == "row":
            return client.call("GET", f"{base}/{reads[i % len(reads)]}", read_headers)
        if kind == "cached":
            return client.call("GET", f"{base}/{reads[i % len(reads)]}/comments?limit=20",
                               read_headers)
        if kind == "built":
            # A cursor never asked before (as bench_perf's page built from the database): past
            # any id the shards hand out, so the page is the thread's newest 20.
            fresh = next(asked)  # the warm-up's cursors are never asked again
            last = base64.urlsafe_b64encode(f'["newest",91{run:06d}{fresh:011d}]'.encode())
            last = last.decode()
            return client.call("GET", f"{base}/{reads[i % len(reads)]}/comments?limit=20"
                               f"&cursor={last.rstrip('=')}", read_headers)
        body: dict[str, Any] = {"body": f"request cost comment {i}"}
        if target == "plain":
            body["author"] = "request-cost"
        return client.call("POST", f"{base}/{writes[i % len(writes)]}/comments", write_headers,
                           json.dumps(body).encode())

    if kind not in ("row", "cached", "built", "write") or (target, kind) == ("plain", "cached"):
        raise SystemExit(f"no {kind} requests for {target}")
    return client, one


def _calls_of(stats: pstats.Stats, path_end: str, function: str) -> int:
    return sum(row[1] for (path, _line, name), row in stats.stats.items()  # type: ignore[attr-defined]
               if path.endswith(path_end) and name == function)


def _wait_for_line() -> None:
    """Read a line from stdin, never blocked in the read: valgrind takes callgrind_control's
    commands only while this process runs code, so a blocked read would never see them."""
    while not select.select([sys.stdin], [], [], 0.05)[0]:
        pass
    sys.stdin.readline()


def main() -> None:
    target, kind, n, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    site = json.loads(Path(sys.argv[5]).read_text())
    client, one = request_maker(target, kind, site)
    for i in range(WARM_UP):
        one(i)
    client.statuses.clear()
    result: dict[str, Any] = {"target": target, "kind": kind, "requests": n}
    if mode == "profile":
        profile = cProfile.Profile()
        profile.enable()
        for i in range(n):
            one(i)
        profile.disable()
        stats = pstats.Stats(profile)
        if os.environ.get("REQUEST_COST_PSTATS"):
            # For reading with pstats: where the calls went, one file per side and kind.
            stats.dump_stats(os.environ["REQUEST_COST_PSTATS"] + f".{target}.{kind}")
        result["python_calls"] = stats.total_calls / n  # type: ignore[attr-defined]
        # psycopg's own wait, or the gevent one the service's pools use under monkey patching.
        result["database_waits"] = (_calls_of(stats, "psycopg/waiting.py", "wait_poll")
                                    + _calls_of(stats, "project/pgpool/gevent_wait.py", "wait")
                                    ) / n
        result["redis_commands"] = _calls_of(stats, "redis/connection.py",
                                             "send_packed_command") / n
    elif mode == "cpu":
        started = time.process_time()
        for i in range(n):
            one(i)
        result["cpu_us"] = (time.process_time() - started) * 1e6 / n
    elif mode == "callgrind":
        print("ready", flush=True)
        _wait_for_line()
        for i in range(n):
            one(i)
        print("done", flush=True)
        _wait_for_line()
    result["statuses"] = client.statuses
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
