"""A tiny HTTP client for tests: real requests to the service, JSON answers."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any


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
    if data is None and body is not None:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", **(headers or {})}
    all_headers = {"Accept": "application/json", **(headers or {})}
    request = urllib.request.Request(url, data=data, headers=all_headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:
            return Response(answer.status, _decode(answer.read()), dict(answer.headers))
    except urllib.error.HTTPError as error:
        return Response(error.code, _decode(error.read()), dict(error.headers))


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
