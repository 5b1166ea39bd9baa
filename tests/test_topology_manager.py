"""The local topology manager's verbs on a small topology of their own."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

from deploy.processes import TopologyError, port_in_use, read_pid, require_binary
from deploy.topology import LocalLayout, LocalTopology, main
from tests.client import get
from tests.conftest import make_topology


def postmaster_pids(topo: LocalTopology) -> dict[str, int | None]:
    return {n.alias: read_pid(n.datadir / "postmaster.pid") for n in topo.layout.nodes()}


def all_ports(layout: LocalLayout) -> list[int]:
    return [layout.pgbouncer_port, layout.redis_port, layout.http_port, layout.edge_port] + [
        n.port for n in layout.nodes()
    ]


@pytest.mark.slow
def test_up_serves_readyz_is_idempotent_and_down_stops_everything() -> None:
    topo = make_topology("shardsvc-verbs-", shards=1, replicas=1, start_port=27400)
    try:
        topo.up(service=True, migrate=True)
        ready = get(f"http://127.0.0.1:{topo.layout.http_port}/readyz/shards")
        assert ready.status == 200, ready.body
        assert ready.body["status"] == "ok"
        assert set(ready.body["databases"]) == {
            "default", "default_replica_1", "shard_0", "shard_0_replica_1"
        }
        assert all(entry["reachable"] for entry in ready.body["databases"].values())

        pids = postmaster_pids(topo)
        service_pid = read_pid(topo.layout.root / "service" / "gunicorn.pid")
        assert None not in pids.values() and service_pid is not None

        topo.up(service=True, migrate=True)  # second run: nothing restarted, nothing broken
        assert postmaster_pids(topo) == pids
        assert read_pid(topo.layout.root / "service" / "gunicorn.pid") == service_pid
        assert get(f"http://127.0.0.1:{topo.layout.http_port}/readyz").status == 200
        assert get(f"{topo.edge_url}/readyz").status == 200  # nginx in front

        topo.down()
        assert not any(port_in_use(p) for p in all_ports(topo.layout))
        assert all(pid is None for pid in postmaster_pids(topo).values())
        assert read_pid(topo.pgbouncer_dir / "pgbouncer.pid") is None
        assert read_pid(topo.redis_dir / "redis.pid") is None
        assert topo.edge_pid() is None
    finally:
        topo.destroy()
    assert not topo.layout.root.exists()


def test_port_in_use_is_a_clear_error(topology: LocalTopology) -> None:
    # A second topology whose ports are the harness's (taken) ones.
    root = Path(tempfile.mkdtemp(prefix="shardsvc-clash-", dir="/tmp"))
    root.chmod(0o755)
    clash = LocalTopology(
        LocalLayout(root=root, base_port=topology.layout.base_port, shards=1, replicas=0,
                    durable=False),
        echo=lambda m: None,
    )
    try:
        with pytest.raises(TopologyError, match=r"port \d+ .* already in use.*--base-port"):
            clash.up(service=False, migrate=False)
        assert not any(root.glob("pg/*/data/postmaster.pid"))
    finally:
        clash.destroy()


@pytest.mark.skipif(os.geteuid() != 0, reason="only root switches to the postgres user")
def test_a_folder_the_postgres_user_cannot_enter_is_a_clear_error(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    topo = LocalTopology(LocalLayout(root=private / "data", base_port=28900), echo=print)
    with pytest.raises(TopologyError, match=r"cannot enter .*--dir"):
        topo.up(service=False, migrate=False)


def test_a_missing_binary_names_its_package() -> None:
    with pytest.raises(TopologyError, match="apt-get install pgbouncer"):
        require_binary("/nonexistent/pgbouncer", "pgbouncer")


def test_status_reports_replica_lag(topology: LocalTopology, capsys) -> None:
    assert main(["status", "--dir", str(topology.layout.root)]) == 0
    out = capsys.readouterr().out
    assert "shard_0_replica_1" in out
    assert "replica, replay" in out and "lag" in out
    assert "pool_mode=transaction" in out


def test_status_without_topology_says_run_up(tmp_path: Path, capsys) -> None:
    assert main(["status", "--dir", str(tmp_path / "none")]) == 1
    assert "run `up` first" in capsys.readouterr().out


def test_bad_layout_arguments_are_refused() -> None:
    with pytest.raises(TopologyError, match="--shards must be at least 1"):
        LocalLayout(root=Path("/tmp/x"), shards=0)
