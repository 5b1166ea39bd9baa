"""The edge's pure parts: whom the service believes about the client, the app hosts' network
plan, nginx's configuration as rendered, and the topology file's edge tables."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import replace
from pathlib import Path

import pytest

from deploy.app_network import AppNetwork
from deploy.edge import NGINX_DIR, UPSTREAM_KEEPALIVE_TIMEOUT
from deploy.layout import PROJECT_DIR, LocalLayout
from deploy.processes import TopologyError
from deploy.topology import LocalTopology
from project.proxy import client_address
from shards.topology import load_shard_map

PROXY = [ipaddress.ip_network("10.1.2.1/32")]


# ----- the client's address behind a trusted proxy ---------------------------------------------
def test_a_trusted_proxy_names_the_client() -> None:
    meta = {"REMOTE_ADDR": "10.1.2.1", "HTTP_X_REAL_IP": "203.0.113.7"}
    assert client_address(meta, PROXY) == "203.0.113.7"


@pytest.mark.parametrize("meta", [
    {"REMOTE_ADDR": "10.1.2.9", "HTTP_X_REAL_IP": "127.0.0.1"},  # not the proxy: ignored
    {"REMOTE_ADDR": "10.1.2.1", "HTTP_X_REAL_IP": "not-an-address"},
    {"REMOTE_ADDR": "10.1.2.1"},
    {"REMOTE_ADDR": "", "HTTP_X_REAL_IP": "127.0.0.1"},
])
def test_anyone_else_keeps_their_own_address(meta: dict[str, str]) -> None:
    assert client_address(meta, PROXY) is None


def test_an_ipv4_mapped_proxy_address_counts_as_ipv4() -> None:
    meta = {"REMOTE_ADDR": "::ffff:10.1.2.1", "HTTP_X_REAL_IP": "::ffff:203.0.113.7"}
    assert client_address(meta, PROXY) == "203.0.113.7"


# ----- the app hosts' network ------------------------------------------------------------------
def test_each_base_port_gets_its_own_subnet_and_short_names() -> None:
    nets = [AppNetwork(port) for port in (15400, 15500, 25400, 30000, 64999)]
    assert len({n.subnet for n in nets}) == len(nets)
    for net in nets:
        assert net.subnet.is_private and net.subnet.prefixlen == 24
        assert net.gateway == str(net.subnet.network_address + 1)
        assert ipaddress.ip_address(net.address(1)) in net.subnet
        assert len(net.bridge) <= 15 and len(net._veth(8)) + 1 <= 15  # Linux's IFNAMSIZ
    assert AppNetwork(30000).address(3) == "10.117.48.13"


# ----- nginx's configuration --------------------------------------------------------------------
def topology(tmp_path: Path, app_hosts: int) -> LocalTopology:
    return LocalTopology(LocalLayout(root=tmp_path, base_port=30000, app_hosts=app_hosts))


def test_nginx_config_is_complete(tmp_path: Path) -> None:
    text = topology(tmp_path, 2).edge_config()
    assert not re.search(r"@[a-z_]+@", text)
    assert "listen 127.0.0.1:30003;" in text
    assert f"pid {tmp_path}/nginx/nginx.pid;" in text
    assert f"alias {tmp_path}/static/$asset;" in text
    # The demo site: another origin (its own port), the topology's demo folder.
    assert "listen 127.0.0.1:30028;" in text and f"root {tmp_path}/demo;" in text
    # Snippets are included from the topology folder (nginx's user may not enter the checkout),
    # copied there from deploy/nginx by ensure_edge.
    snippets = re.findall(r"include (\S+\.conf);", text)
    assert snippets
    for snippet in snippets:
        if snippet.endswith("upstream.conf"):
            continue
        assert snippet.startswith(f"{tmp_path}/nginx/snippets/"), snippet
        assert (NGINX_DIR / Path(snippet).name).exists(), snippet


def test_upstream_lists_hosts_and_marks_drained_ones_down(tmp_path: Path) -> None:
    edge = topology(tmp_path, 3)
    text = edge.upstream_config(drained={"app_2"})
    servers = re.findall(r"server (\S+) max_fails=1 fail_timeout=5s( down)?;", text)
    assert servers == [("10.117.48.11:30002", ""), ("10.117.48.12:30002", " down"),
                       ("10.117.48.13:30002", "")]
    single = topology(tmp_path, 0).upstream_config(drained=set())
    assert re.findall(r"server (\S+) ", single) == ["127.0.0.1:30002"]


def test_nginx_closes_idle_upstream_connections_before_gunicorn_does() -> None:
    gunicorn = (PROJECT_DIR / "deploy" / "gunicorn.conf.py").read_text()
    keepalive = int(re.search(r"^keepalive = (\d+)$", gunicorn, re.MULTILINE).group(1))
    assert int(UPSTREAM_KEEPALIVE_TIMEOUT.rstrip("s")) < keepalive


def test_the_body_limit_matches_the_service() -> None:
    from django.conf import settings

    limits = (PROJECT_DIR / "deploy" / "nginx" / "limits.conf").read_text()
    size = re.search(r"^client_max_body_size (\d+)k;$", limits, re.MULTILINE)
    assert size is not None and int(size.group(1)) * 1024 == settings.MAX_REQUEST_BYTES


def test_app_host_count_is_bounded(tmp_path: Path) -> None:
    with pytest.raises(TopologyError, match="--app-hosts"):
        replace(LocalLayout(root=tmp_path), app_hosts=9)


# ----- the topology file's edge tables ----------------------------------------------------------
def test_the_topology_file_describes_the_edge_and_settings_accept_it(tmp_path: Path) -> None:
    edge = topology(tmp_path, 2)
    path = edge.write_topology_file()
    text = path.read_text()
    assert 'listen = "127.0.0.1:30003"' in text
    assert text.count("[[app_hosts]]") == 2 and 'address = "10.117.48.12:30002"' in text
    # App hosts reach PgBouncer and Redis over the bridge.
    assert "@10.117.48.1:30000/" in text and "redis://10.117.48.1:30001/0" in text
    assert load_shard_map(path).shard_names == ("shard_0", "shard_1")
