"""The monitoring stack's configuration (deploy/monitoring.py, deploy/prometheus): pure logic."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from deploy.layout import LocalLayout
from deploy.monitoring import PROMETHEUS_DIR, MonitorParams, render_rules
from deploy.processes import TopologyError
from deploy.topology import LocalTopology

ALERTS = (PROMETHEUS_DIR / "rules" / "alerts.yml").read_text()
# Alerts that read recorded series live in the recording rules' group (see recording.yml).
ALL_RULES = "".join(p.read_text() for p in sorted((PROMETHEUS_DIR / "rules").glob("*.yml")))
RULE_TESTS = (PROMETHEUS_DIR / "tests" / "alerts_test.yml").read_text()


def test_every_alert_rule_has_a_unit_test_that_expects_it_to_fire() -> None:
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", ALL_RULES, flags=re.MULTILINE))
    # An `alertname:` followed by a non-empty `exp_alerts:` list.
    firing = set(re.findall(r"alertname: (\w+)\n\s+exp_alerts:\n\s+- exp_labels", RULE_TESTS))
    assert len(alerts) >= 15
    assert alerts - firing == set()


def test_alert_for_replaces_every_for_and_nothing_else() -> None:
    rendered = render_rules(ALERTS, "2s")
    durations = re.findall(r"^\s+for: (\S+)$", rendered, flags=re.MULTILINE)
    assert durations and set(durations) == {"2s"}
    assert "[1h]" in rendered  # range selectors keep their windows
    assert render_rules(ALERTS, None) == ALERTS


@pytest.mark.parametrize("value", ["1 s", "fast", "10", ""])
def test_a_duration_prometheus_would_refuse_is_refused_at_once(value: str) -> None:
    with pytest.raises(TopologyError, match="not a Prometheus duration"):
        MonitorParams(scrape_interval=value)


def test_prometheus_scrapes_every_server_with_its_cluster_and_role(tmp_path: Path) -> None:
    topology = LocalTopology(LocalLayout(root=tmp_path, base_port=21000, shards=2, replicas=1))
    config = topology.prometheus_config(MonitorParams(scrape_interval="1s"))
    assert config["global"]["scrape_interval"] == "1s"
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    postgres = {c["labels"]["alias"]: (c["targets"][0], c["labels"]["cluster"],
                                       c["labels"]["role"]) for c in jobs["postgres"]}
    assert postgres["shard_1_replica_1"] == ("127.0.0.1:21035", "shard_1", "replica")
    assert postgres["default"] == ("127.0.0.1:21030", "default", "primary")
    assert len(postgres) == 6
    assert [c["targets"] for c in jobs["shardsvc"]] == [["127.0.0.1:21002"]]
    assert {"pgbouncer", "redis", "node", "prometheus"} <= set(jobs)
    ports = [int(t.rsplit(":", 1)[1]) for configs in jobs.values() for c in configs
             for t in c["targets"]]
    assert all(21000 <= port < 21040 for port in ports)  # inside the topology's port block


def test_under_patroni_every_member_s_rest_api_is_scraped_without_a_role(tmp_path: Path) -> None:
    topology = LocalTopology(LocalLayout(root=tmp_path, base_port=21000, shards=1, replicas=1,
                                         ha=True))
    config = topology.prometheus_config(MonitorParams())
    jobs = {job["job_name"]: job["static_configs"] for job in config["scrape_configs"]}
    patroni = {c["labels"]["alias"]: (c["targets"], c["labels"]) for c in jobs["patroni"]}
    assert sorted(patroni) == ["default_m0", "default_m1", "shard_0_m0", "shard_0_m1"]
    # The REST API's ports (base + 50 + k): the rules take a member's role from what it
    # reports, so no target names one.
    assert patroni["shard_0_m1"] == (["127.0.0.1:21053"], {
        "instance": "shard_0_m1", "alias": "shard_0_m1", "cluster": "shard_0"})
    assert "patroni" not in {job["job_name"] for job in LocalTopology(LocalLayout(
        root=tmp_path, base_port=21000)).prometheus_config(MonitorParams())["scrape_configs"]}
