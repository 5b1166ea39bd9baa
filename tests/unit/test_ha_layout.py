"""The highly available topology's layout and topology file, without starting anything: member
names and ports, the second port block, and the file's multi-host DSN and Patroni URLs."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from django.core.exceptions import ImproperlyConfigured

from deploy.layout import HA_SPAN
from deploy.processes import TopologyError
from deploy.topology import LocalLayout, LocalTopology, layout_from_args
from shards.topology import databases_setting, load_shard_map


def ha_topology(tmp_path: Path, **kwargs: object) -> LocalTopology:
    layout = LocalLayout(root=tmp_path, base_port=26000, ha=True, **kwargs)  # type: ignore[arg-type]
    return LocalTopology(layout, echo=lambda message: None)


def test_members_and_ports_stay_inside_their_two_blocks(tmp_path: Path) -> None:
    layout = ha_topology(tmp_path, shards=2, replicas=2).layout
    nodes = layout.nodes()
    assert [n.alias for n in layout.members("shard_1")] == ["shard_1_m0", "shard_1_m1",
                                                            "shard_1_m2"]
    assert {n.cluster for n in nodes} == {"default", "shard_0", "shard_1"}
    ports = [n.port for n in nodes]
    rest = [n.rest_port for n in nodes]
    etcd = [p for pair in layout.etcd_ports() for p in pair]
    every = [*ports, *rest, *etcd, layout.pgbouncer_port, layout.redis_port]
    assert len(set(every)) == len(every)
    assert all(26000 <= p < 26040 for p in ports)
    # Patroni and etcd sit in the second block: base+40 .. base+99, never another topology's.
    assert all(26040 <= p < 26000 + HA_SPAN for p in [*rest, *etcd])  # type: ignore[operator]


def test_plain_layout_is_unchanged(tmp_path: Path) -> None:
    layout = LocalLayout(root=tmp_path, base_port=26000)
    assert not layout.ha
    assert [n.alias for n in layout.nodes()][:2] == ["default", "default_replica_1"]
    assert all(n.rest_port is None for n in layout.nodes())


def test_too_many_servers_for_the_rest_ports(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="REST ports for up to 50 servers"):
        LocalLayout(root=tmp_path, base_port=26000, ha=True, shards=12, replicas=3)


def test_missing_cluster_names_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match=r"no cluster 'shard_9'.*default, shard_0, shard_1"):
        ha_topology(tmp_path).layout.members("shard_9")


def test_topology_file_reaches_the_leader_and_reads_from_every_member(tmp_path: Path) -> None:
    topology = ha_topology(tmp_path)
    shard_map = load_shard_map(topology.write_topology_file())
    shard_0 = shard_map.shard("shard_0")
    # The app's entry is PgBouncer's cluster entry, which the leader follower re-points.
    assert shard_0.primary.dsn == "postgresql://app@127.0.0.1:26000/shard_0"
    # Every member is a replica candidate; the service reads only from one in recovery.
    assert [r.dsn.rsplit("/", 1)[1] for r in shard_0.replicas] == ["shard_0_m0", "shard_0_m1"]
    assert shard_0.patroni == ("http://127.0.0.1:26052", "http://127.0.0.1:26053")
    direct = databases_setting(shard_map, use_direct=True)["shard_0"]
    assert (direct["HOST"], direct["PORT"]) == ("127.0.0.1,127.0.0.1", "26012,26013")
    assert direct["OPTIONS"]["target_session_attrs"] == "read-write"


@pytest.mark.parametrize(("value", "phrase"), [
    ('"http://a:1"', "patroni must be an array of strings, got a string"),
    ('["ftp://a:1"]', "patroni URL 'ftp://a:1' is not http(s)"),
])
def test_bad_patroni_urls(tmp_path: Path, value: str, phrase: str) -> None:
    path = ha_topology(tmp_path).write_topology_file()
    text = path.read_text().replace('patroni = ["http://127.0.0.1:26052", '
                                    '"http://127.0.0.1:26053"]', f"patroni = {value}")
    path.write_text(text)
    with pytest.raises(ImproperlyConfigured) as info:
        load_shard_map(path)
    assert phrase in str(info.value)
    assert 'write patroni = ["http://host:8008", ...]' in str(info.value)


def test_multi_host_port_must_be_digits(tmp_path: Path) -> None:
    path = ha_topology(tmp_path).write_topology_file()
    path.write_text(path.read_text().replace("127.0.0.1:26013/", "127.0.0.1:x/", 1))
    with pytest.raises(ImproperlyConfigured, match="port that is not a number"):
        load_shard_map(path)


def test_the_kind_of_a_saved_topology_is_kept(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    ha_topology(tmp_path).layout.save()
    # No flag: the saved kind (HA). --plain on an HA folder: refused before anything starts.
    assert layout_from_args(parse(["status", "--dir", str(tmp_path)])).ha
    plain = LocalTopology(layout_from_args(parse(["up", "--dir", str(tmp_path), "--plain"])),
                          echo=lambda message: None)
    with pytest.raises(TopologyError, match=r"holds a highly available topology.*destroy"):
        plain.up(service=False, migrate=False)
    # A new folder: HA unless --plain.
    assert layout_from_args(parse(["up", "--dir", str(tmp_path / "new")])).ha
    assert not layout_from_args(parse(["up", "--dir", str(tmp_path / "new"), "--plain"])).ha


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("verb")
    parser.add_argument("--dir")
    parser.add_argument("--plain", action="store_true")
    return parser.parse_args(argv)


def test_patroni_config_parses_with_the_settings_that_matter(tmp_path: Path) -> None:
    topology = ha_topology(tmp_path, durable=False, pg_settings={"timezone": "'Pacific/Chatham'"})
    node = topology.layout.members("shard_0")[1]
    config = yaml.safe_load(topology.patroni_config(node))
    assert (config["scope"], config["name"]) == ("shard_0", "shard_0_m1")
    assert config["restapi"]["listen"] == f"127.0.0.1:{node.rest_port}"
    assert config["etcd3"]["hosts"] == "127.0.0.1:26040,127.0.0.1:26042,127.0.0.1:26044"
    dcs = config["bootstrap"]["dcs"]
    # Patroni refuses a loop that cannot renew the key within ttl.
    assert dcs["loop_wait"] + 2 * dcs["retry_timeout"] <= dcs["ttl"]
    assert dcs["primary_start_timeout"] == 0
    assert dcs["synchronous_mode"] is True and dcs["synchronous_mode_strict"] is False
    assert dcs["failsafe_mode"] is True and dcs["postgresql"]["use_pg_rewind"] is True
    parameters = dcs["postgresql"]["parameters"]
    assert parameters["wal_level"] == "logical"
    assert parameters["timezone"] == "Pacific/Chatham"
    # Throwaway data skips fsync, but commits stay synchronous (no acknowledged write lost to a
    # failover) and full pages are written (pg_rewind needs them).
    assert parameters["fsync"] == "off"
    assert "synchronous_commit" not in parameters and "full_page_writes" not in parameters
    assert {"no-sync"} <= {i for i in config["bootstrap"]["initdb"] if isinstance(i, str)}
    assert config["postgresql"]["listen"] == f"127.0.0.1:{node.port}"
    assert str(node.datadir) == config["postgresql"]["data_dir"]


def test_pg_ctl_beside_patroni_is_refused(tmp_path: Path) -> None:
    topology = ha_topology(tmp_path)
    with pytest.raises(TopologyError, match=r"through it \(stop_member or kill_postmaster\)"):
        topology.stop_node("shard_0_m0")
    with pytest.raises(TopologyError, match=r"through it \(start_member\)"):
        topology.start_node("shard_0_m0")
