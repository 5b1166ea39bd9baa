"""Following the topology file live (shards/live_topology.py): what a running worker refuses,
how a new alias's settings are made, how the replica checker moves to a new map, and that a
bad or merely touched file changes nothing. tests/test_live_topology.py does it for real."""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path

import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connections

from routers.replica_checker import ReplicaHealth
from shards.live_topology import TopologyFollower, check_live_change, register_databases
from shards.topology import database_like, databases_setting, get_shard_map, load_shard_map
from tests.unit.test_topology_file import GOOD

THIRD_SHARD = """
[[shards]]
name = "shard_2"
dsn = "postgresql://app@127.0.0.1:15400/shard_2"
direct_dsn = "postgresql://postgres@127.0.0.1:15416/app"
[[shards.replicas]]
dsn = "postgresql://app@127.0.0.1:15400/shard_2_replica_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15417/app"
"""
SHARD_0_REPLICA = """[[shards.replicas]]
dsn = "postgresql://app@127.0.0.1:15400/shard_0_replica_1"
direct_dsn = "postgresql://postgres@127.0.0.1:15413/app"
"""


def grown(text: str) -> str:
    return text.replace("\n[redis]", THIRD_SHARD + "\n[redis]")


def write(tmp_path: Path, text: str, name: str = "topology.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_shards_and_replicas_may_be_added_and_replicas_removed(tmp_path: Path) -> None:
    old = load_shard_map(write(tmp_path, GOOD))
    check_live_change(old, load_shard_map(write(tmp_path, grown(GOOD), "grown.toml")))
    assert SHARD_0_REPLICA in GOOD
    check_live_change(old, load_shard_map(
        write(tmp_path, GOOD.replace(SHARD_0_REPLICA, ""), "fewer.toml")))


def test_a_removed_shard_is_refused_naming_the_fix(tmp_path: Path) -> None:
    old = load_shard_map(write(tmp_path, grown(GOOD)))
    new = load_shard_map(write(tmp_path, GOOD, "shrunk.toml"))
    with pytest.raises(ImproperlyConfigured, match="shard_2 removed") as refused:
        check_live_change(old, new)
    assert "move their tenants away" in str(refused.value)


@pytest.mark.parametrize(("before", "after"), [
    ("redis://127.0.0.1:15401/0", "redis://127.0.0.1:15499/0"),
    ("127.0.0.1:15400/control\"", "127.0.0.1:15499/control\""),
])
def test_another_control_database_or_redis_needs_a_restart(tmp_path: Path, before: str,
                                                           after: str) -> None:
    old = load_shard_map(write(tmp_path, GOOD))
    new = load_shard_map(write(tmp_path, GOOD.replace(before, after), "moved.toml"))
    with pytest.raises(ImproperlyConfigured, match="restart the service"):
        check_live_change(old, new)


def test_a_new_aliass_settings_are_made_like_the_existing_ones(tmp_path: Path) -> None:
    shard_map = load_shard_map(write(tmp_path, GOOD))
    template = databases_setting(shard_map, options={"MAX_CONNS": 7, "connect_timeout": 3})[
        "default"]
    template["DISABLE_SERVER_SIDE_CURSORS"] = True
    entry = database_like(template, "postgresql://app@10.0.0.9:6432/shard_2?sslmode=require")
    assert (entry["HOST"], entry["PORT"], entry["NAME"], entry["USER"]) == (
        "10.0.0.9", "6432", "shard_2", "app")
    assert entry["ENGINE"] == template["ENGINE"]
    assert entry["OPTIONS"] == {"MAX_CONNS": 7, "connect_timeout": 3, "sslmode": "require"}
    assert entry["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert entry["TEST"] == {"NAME": "shard_2"}
    assert template["HOST"] == "127.0.0.1"  # the template is not changed


def test_each_role_gets_its_own_options_over_the_common_ones(tmp_path: Path) -> None:
    shard_map = load_shard_map(write(tmp_path, GOOD))
    entries = databases_setting(
        shard_map, options={"MAX_CONNS": 40, "connect_timeout": 3},
        role_options={"primary": {"MAX_CONNS": 16}})
    assert entries["shard_0"]["OPTIONS"] == {"MAX_CONNS": 16, "connect_timeout": 3}
    assert entries["default"]["OPTIONS"]["MAX_CONNS"] == 16  # the control primary too
    assert entries["shard_0_replica_1"]["OPTIONS"] == {"MAX_CONNS": 40, "connect_timeout": 3}


def test_the_settings_cap_primaries_lower_than_replicas() -> None:
    primary, replica = (settings.DATABASES[a]["OPTIONS"]["MAX_CONNS"]
                        for a in ("shard_0", "shard_0_replica_1"))
    assert (primary, replica) == (settings.DB_POOL_MAX_CONNS_PRIMARY, settings.DB_POOL_MAX_CONNS)
    assert primary < replica


def test_servers_added_live_get_their_roles_options(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    # On copies: the process's own settings and connections stay as they are.
    databases = copy.deepcopy(settings.DATABASES)
    monkeypatch.setattr(settings, "DATABASES", databases)
    monkeypatch.setattr(connections, "settings", databases)
    current = get_shard_map().source.read_text()
    register_databases(load_shard_map(write(tmp_path, grown(current))))
    # Made from the control primary's entry, whose cap is the primaries' one.
    assert databases["shard_2"]["OPTIONS"]["MAX_CONNS"] == settings.DB_POOL_MAX_CONNS_PRIMARY
    assert databases["shard_2_replica_1"]["OPTIONS"]["MAX_CONNS"] == settings.DB_POOL_MAX_CONNS


def test_the_replica_checker_moves_to_a_new_map(tmp_path: Path) -> None:
    health = ReplicaHealth(load_shard_map(write(tmp_path, GOOD)))
    health.mark_failed("shard_0_replica_1", "refused")
    health.mark_failed("shard_1_replica_1", "refused")
    new = load_shard_map(write(tmp_path, grown(GOOD).replace(SHARD_0_REPLICA, ""), "new.toml"))
    health.retarget(new)
    assert health.shard_map is new
    assert health.usable_replicas("shard_2") == []  # known now, not yet checked
    assert health.usable_replicas("shard_0") == []
    # The removed replica is forgotten; an unchanged one keeps its state.
    assert set(health.states()) == {"shard_1_replica_1"}
    with pytest.raises(TypeError):
        health.retarget(object())  # type: ignore[arg-type]


def test_a_touched_or_broken_file_changes_nothing(tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    current = get_shard_map()
    path = write(tmp_path, current.source.read_text())
    follower = TopologyFollower(path, interval=60.0)
    assert follower.poll() is False  # the same map as the process runs on
    os.utime(path)
    assert follower.poll() is False  # too soon: one stat per interval at most
    assert follower.poll(force=True) is False  # touched, same bytes
    path.write_text("[control\n")
    with caplog.at_level(logging.ERROR, logger="shardsvc.topology"):
        assert follower.poll(force=True) is False
    assert "not applied (still serving on the old map)" in caplog.text
    assert get_shard_map() is current
    path.unlink()
    assert follower.poll(force=True) is False  # gone: keep serving
