"""The ops dashboard's pure parts: progress never past its total, bad chart requests refused
with a 400, a missing Prometheus reported as such (no server reached)."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from django.test import RequestFactory, override_settings

from migrations_tools.ops_dashboard import _job, series_json
from migrations_tools.ops_prometheus import PrometheusUnavailable, chart_series
from shards.models import MoveJob, Tenant


def job(state: str, copied: int, total: int) -> MoveJob:
    return MoveJob(pk=7, tenant=Tenant(pk=3, slug="acme", shard="shard_0"), source="shard_0",
                   target="shard_1", state=state, rows_copied=copied, rows_total=total,
                   lag_bytes=4096, created_at=dt.datetime(2026, 1, 1, tzinfo=dt.UTC))


def test_progress_never_exceeds_its_total_and_a_finished_job_shows_no_lag() -> None:
    running = _job(job("copying", 5624, 5613))
    assert (running["rows_copied"], running["rows_total"]) == (5613, 5613)
    assert running["lag_bytes"] == 4096
    assert _job(job("done", 10, 10))["lag_bytes"] is None


@pytest.mark.parametrize(("query", "code"), [
    ({"chart": "cpu"}, "unknown_chart"),
    ({"chart": "rate", "minutes": "0"}, "bad_minutes"),
    ({"chart": "rate", "minutes": "lots"}, "bad_minutes"),
])
def test_a_bad_chart_request_is_a_400_that_says_why(query: dict[str, str], code: str) -> None:
    answer = series_json(RequestFactory().get("/admin/ops/series.json", query))
    assert answer.status_code == 400
    assert json.loads(answer.content)["error"] == code


@override_settings(PROMETHEUS_URL="")
def test_without_prometheus_the_charts_say_how_to_get_one() -> None:
    with pytest.raises(PrometheusUnavailable, match="SHARDSVC_PROMETHEUS_URL is not set"):
        chart_series("rate")
    answer = series_json(RequestFactory().get("/admin/ops/series.json", {"chart": "p99"}))
    assert answer.status_code == 503
    assert "SHARDSVC_PROMETHEUS_URL" in json.loads(answer.content)["message"]
