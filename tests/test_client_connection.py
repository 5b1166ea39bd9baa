"""tests/client.py's keep-alive Connection (the failover load's client) against the service."""

from __future__ import annotations

import socket
import time

import pytest

from tests import client
from tests.client import Connection


def test_calls_share_one_connection_and_reopen_after_idle(service, monkeypatch) -> None:
    via = Connection(service.url)
    answers = [via.request("GET", f"{service.url}/healthz") for _ in range(5)]
    assert [a.status for a in answers] == [200] * 5
    assert via.opened == 1
    monkeypatch.setattr(client, "IDLE_REOPEN_SECONDS", 0.05)
    time.sleep(0.1)
    assert via.request("GET", "/healthz").status == 200
    assert via.opened == 2
    via.close()


def test_error_answers_and_json_bodies_keep_the_connection(service) -> None:
    via = Connection(service.url)
    missing = via.request("POST", "/api/sites/no-such-site/threads", body={"url": "x"},
                          headers={"X-Api-Key": "nope"})
    assert 400 <= missing.status < 500 and isinstance(missing.body, dict), missing
    assert via.request("GET", "/healthz").status == 200
    assert via.opened == 1
    via.close()


def test_a_failed_call_raises_and_the_next_opens_anew(service) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    via = Connection(f"http://127.0.0.1:{free}")
    with pytest.raises(ConnectionRefusedError):
        via.request("GET", "/healthz")
    with pytest.raises(ConnectionRefusedError):
        via.request("GET", "/healthz")
    assert via.opened == 2


def test_urls_of_another_host_are_refused(service) -> None:
    via = Connection(service.url)
    with pytest.raises(ValueError, match="not on"):
        via.request("GET", "http://127.0.0.2:1/healthz")
    with pytest.raises(ValueError, match="only http"):
        Connection("https://127.0.0.1:443")
