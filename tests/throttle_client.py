"""Calls and checks shared by the throttling tests (test_throttle, test_throttle_push): a
service with small limits of its own, requests from chosen loopback addresses, and what Redis
saw of the counters."""

from __future__ import annotations

import http.client
import json
import secrets
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from deploy.topology import LocalTopology, ServiceProcess
from tests.client import Response, get

AUTH_LIMIT = 5
WRITE_LIMIT = 4
LOGIN_LIMIT = 3
DAY = 86400


@contextmanager
def throttled_service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    """The service with the small limits above, on a port of its own."""
    from tests.conftest import running_service

    with running_service(
        topology, name="throttle", port=topology.layout.http_port + 7,
        SHARDSVC_THROTTLE_AUTH_FAILURES=f"{AUTH_LIMIT}/d",
        SHARDSVC_THROTTLE_WRITES=f"{WRITE_LIMIT}/d",
        SHARDSVC_THROTTLE_ADMIN_LOGIN=f"{LOGIN_LIMIT}/d",
        # Directory entries stay in Redis: the only control queries left are key lookups.
        SHARDSVC_DIRECTORY_REDIS_TTL="3600",
    ) as svc:
        yield svc


def call(source: str, method: str, url: str, *, body: Any = None,
         headers: dict[str, str] | None = None, form: dict[str, str] | None = None) -> Response:
    """One request sent from the loopback address `source`."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30,
                                      source_address=(source, 0))
    all_headers = {"Accept": "application/json", **(headers or {})}
    data: bytes | None = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    elif form is not None:
        data = urllib.parse.urlencode(form).encode()
        all_headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(method, parts.path + (f"?{parts.query}" if parts.query else ""),
                     body=data, headers=all_headers)
        answer = conn.getresponse()
        raw = answer.read()
        try:
            decoded: Any = json.loads(raw)
        except ValueError:
            decoded = raw.decode(errors="replace")
        headers = {name: value for name, value in answer.getheaders()}
        headers["Set-Cookie"] = "\n".join(answer.msg.get_all("Set-Cookie") or [])
        return Response(answer.status, decoded, headers)
    finally:
        conn.close()


def control_queries(service: ServiceProcess) -> float:
    """Queries the service's workers ran on the control cluster, from its /metrics."""
    answer = get(f"{service.url}/metrics")
    assert answer.status == 200, answer.body
    return sum(
        sample.value
        for family in text_string_to_metric_families(answer.body)
        for sample in family.samples
        if sample.name == "shardsvc_db_queries_total" and sample.labels["cluster"] == "default"
    )


def assert_throttled(answer: Response, limit_seconds: int = DAY) -> None:
    assert answer.status == 429, (answer.status, answer.body)
    assert answer.body["error"] == "rate_limited", answer.body
    assert "retry after" in answer.body["message"], answer.body
    assert 1 <= int(answer.headers["Retry-After"]) <= limit_seconds, answer.headers


def well_formed_key() -> str:
    return "sk_" + secrets.token_urlsafe(32)


class CounterReads:
    """Redis commands on django-ratelimit's counters (keys `<prefix>:<version>:rl:<md5>`), seen
    through MONITOR while the block runs: what the service read or counted per request."""

    def __init__(self, topology: LocalTopology) -> None:
        import redis

        self.client = redis.Redis(port=topology.layout.redis_port)
        self.marker = f"counter-reads-{uuid.uuid4().hex}"
        self.seen: list[str] = []

    def __enter__(self) -> CounterReads:
        self.monitor = self.client.monitor().__enter__()
        self.reader = ThreadPoolExecutor(max_workers=1)
        self.done = self.reader.submit(self._read)
        return self

    def _read(self) -> None:
        while True:
            command = self.monitor.next_command()["command"]
            if self.marker in command:
                return
            if ":rl:" in command:
                self.seen.append(command)

    def __exit__(self, *exc: object) -> None:
        self.client.echo(self.marker)
        self.done.result(timeout=30)
        self.reader.shutdown()
        self.monitor.__exit__(None, None, None)
        self.client.close()
