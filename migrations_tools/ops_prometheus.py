"""The ops dashboard's reads from Prometheus's HTTP API: chart series and firing alerts.

Prometheus is the one deploy/monitoring.py starts (settings.PROMETHEUS_URL). The charts draw the
recording rules of deploy/prometheus/rules/recording.yml, one line per shard and role.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import Any

from django.conf import settings

TIMEOUT_SECONDS = 5.0
# About this many points per line, whatever the window.
POINTS_PER_SERIES = 120


class PrometheusUnavailable(RuntimeError):
    """Prometheus is not configured or did not answer; the message says which."""


@dataclass(frozen=True)
class Chart:
    title: str
    unit: str
    expr: str


CHARTS = {
    "rate": Chart("Queries per second", "/s", "cluster_role:shardsvc_db_queries:rate1m"),
    "errors": Chart("Error ratio (rolled-back transactions)", "",
                    "cluster_role:pg_xact_rollback:ratio_rate1m"),
    "p99": Chart("Query latency p99", "s", "cluster_role:shardsvc_db_query_seconds:p99_1m"),
}


def _get(path: str, params: dict[str, str]) -> Any:
    base = settings.PROMETHEUS_URL
    if not base:
        raise PrometheusUnavailable(
            "SHARDSVC_PROMETHEUS_URL is not set: start the monitoring stack "
            "(`python -m deploy.topology up`) or point the service at a Prometheus")
    url = f"{base}/api/v1/{path}?{urllib.parse.urlencode(params)}"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS) as response:
            body = json.load(response)
    except (OSError, ValueError) as exc:
        raise PrometheusUnavailable(f"Prometheus at {base} did not answer: {exc}") from exc
    if body.get("status") != "success":
        raise PrometheusUnavailable(f"Prometheus refused {path}: {body.get('error', body)}")
    return body["data"]


def chart_series(name: str, *, minutes: int = 15) -> dict[str, Any]:
    """One chart's lines over the last `minutes`: [{"label", "points": [[t, v], ...]}]."""
    chart = CHARTS[name]
    end = int(time.time())
    step = max(1, minutes * 60 // POINTS_PER_SERIES)
    # The grid runs from `start` in steps: ending it exactly at `end` puts the newest point
    # now (a series a few seconds old still shows).
    start = end - step * (minutes * 60 // step)
    data = _get("query_range", {"query": chart.expr, "start": str(start), "end": str(end),
                                "step": str(step)})
    lines: list[dict[str, Any]] = []
    for series in data["result"]:
        labels = series["metric"]
        points = [[float(t), float(v)] for t, v in series["values"]
                  if v not in ("NaN", "+Inf", "-Inf")]
        lines.append({"label": f"{labels.get('cluster', '?')} {labels.get('role', '')}".strip(),
                      "points": points})
    lines.sort(key=lambda line: str(line["label"]))
    return {"title": chart.title, "unit": chart.unit, "start": start, "end": end,
            "series": lines}


def firing_alerts() -> list[dict[str, str]]:
    alerts = [alert for alert in _get("alerts", {})["alerts"] if alert["state"] == "firing"]
    return sorted(
        ({"name": alert["labels"].get("alertname", "?"),
          "severity": alert["labels"].get("severity", ""),
          "summary": alert.get("annotations", {}).get("summary", ""),
          "since": alert.get("activeAt", "")} for alert in alerts),
        key=lambda alert: (alert["severity"] != "critical", alert["name"], alert["summary"]))
