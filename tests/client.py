"""A tiny HTTP client for tests: real requests to the service, JSON answers."""

from __future__ import annotations

import http.client
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# Gunicorn closes a keep-alive connection idle for `keepalive` seconds (5, deploy/gunicorn.conf.py);
# a Connection idle for this long opens a new one rather than race that close.
IDLE_REOPEN_SECONDS = 2.0


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str]


def get(url: str, *, timeout: float = 30.0, headers: dict[str, str] | None = None) -> Response:
    return request("GET", url, timeout=timeout, headers=headers)


def post(url: str, body: Any = None, *, timeout: float = 30.0,
         headers: dict[str, str] | None = None) -> Response:
    return request("POST", url, body=body, timeout=timeout, headers=headers)


def request(method: str, url: str, *, body: Any = None, timeout: float = 30.0,
            headers: dict[str, str] | None = None, data: bytes | None = None) -> Response:
    """`body` is sent as JSON (with its content type unless `headers` name another); `data`
    is sent as it is, with only the content type `headers` give."""
    data, all_headers = _encode(body, headers, data)
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, _decode(answer.read()), dict(answer.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, _decode(error.read()), dict(error.headers))


def _encode(body: Any, headers: dict[str, str] | None,
            data: bytes | None) -> tuple[bytes | None, dict[str, str]]:
    if data is None and body is not None:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    return data, {"Accept": "application/json", **(headers or {})}


class Connection:
    """One keep-alive HTTP connection to one host, as a browser or a load generator keeps it
    (`request()` opens a connection per call, which costs both ends more than the call under
    load). For one thread at a time. A call that fails is not retried: its error is raised
    (an OSError or http.client.HTTPException) and the next call opens a new connection."""

    def __init__(self, base_url: str, *, timeout: float = 30.0) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{base_url!r}: only http://host:port URLs")
        self.host, self.port, self.timeout = parts.hostname, parts.port or 80, timeout
        self._conn: http.client.HTTPConnection | None = None
        self._last_used = 0.0
        self.opened = 0  # TCP connections opened so far

    def request(self, method: str, url: str, *, body: Any = None,
                headers: dict[str, str] | None = None) -> Response:
        """`url` is a full URL on this connection's host or a path; `body` as for `request()`."""
        parts = urllib.parse.urlsplit(url)
        if parts.netloc and (parts.hostname, parts.port or 80) != (self.host, self.port):
            raise ValueError(f"{url}: not on {self.host}:{self.port}")
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        data, all_headers = _encode(body, headers, None)
        if self._conn is None or time.monotonic() - self._last_used > IDLE_REOPEN_SECONDS:
            self.close()
            self._conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
            self.opened += 1
        try:
            self._conn.request(method, target, body=data, headers=all_headers)
            answer = self._conn.getresponse()
            raw = answer.read()
        except BaseException:
            self.close()
            raise
        self._last_used = time.monotonic()
        if answer.will_close:
            self.close()
        return Response(answer.status, _decode(raw), dict(answer.headers))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _decode(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except ValueError:
        return raw.decode(errors="replace")


def get_many(urls: list[str], *, timeout: float = 30.0) -> list[Response]:
    """All requests at once, one thread each, so they really are concurrent."""
    with ThreadPoolExecutor(max_workers=len(urls)) as pool:
        return list(pool.map(lambda u: get(u, timeout=timeout), urls))


def wait_until(predicate, *, timeout: float, interval: float = 0.1, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
