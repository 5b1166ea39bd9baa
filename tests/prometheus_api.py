"""Prometheus's HTTP API, as tests read it: instant queries, alerts, targets.

Tests start the monitoring stack once per module with short intervals (`monitoring_started`):
scrapes and rule evaluations every second, every alert's `for:` two seconds.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from deploy.monitoring import MonitorParams
from deploy.topology import LocalTopology

TEST_PARAMS = MonitorParams(scrape_interval="1s", alert_for="2s")


@contextmanager
def monitoring_started(topology: LocalTopology) -> Iterator[str]:
    """Prometheus and the exporters on the test topology; stopped afterwards. Yields its URL."""
    topology.ensure_monitoring(TEST_PARAMS)
    try:
        yield topology.prometheus_url()
    finally:
        topology.stop_monitoring()


def api(url: str, path: str, **params: str) -> Any:
    query = f"?{urllib.parse.urlencode(params)}" if params else ""
    with urllib.request.urlopen(f"{url}/api/v1/{path}{query}", timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return body["data"]


def query(url: str, expr: str) -> list[dict[str, Any]]:
    """An instant query's samples."""
    return list(api(url, "query", query=expr)["result"])


def firing(url: str, alertname: str, **labels: str) -> list[dict[str, Any]]:
    return [
        alert for alert in api(url, "alerts")["alerts"]
        if alert["labels"].get("alertname") == alertname and alert["state"] == "firing"
        and all(alert["labels"].get(k) == v for k, v in labels.items())
    ]


def wait_for(predicate: Any, *, timeout: float, what: str, detail: Any = None) -> Any:
    """Poll until `predicate()` is truthy; the deadline only bounds a broken run. `detail()`
    says what was seen instead, for the failure message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f" ({detail()})" if detail is not None else ""
            raise AssertionError(f"{what}: not within {timeout:.0f} s{seen}")
        time.sleep(0.2)


def unhealthy_targets(url: str) -> list[str]:
    return [
        f"{t['labels']['job']}/{t['labels']['instance']}: {t['health']} {t['lastError']}"
        for t in api(url, "targets")["activeTargets"] if t["health"] != "up"
    ]
