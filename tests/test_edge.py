"""nginx in front of app hosts in their own network namespaces: static files, the API docs,
the proxy cache, a host killed under load, a rolling restart under load, a shard down.

One topology for the module (its own ports): two app hosts, each a Gunicorn in a network
namespace behind nginx, started once; tests that stop a host start it again.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import re
import urllib.request
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from deploy.edge import AppHost
from deploy.processes import read_pid
from deploy.topology import LocalTopology
from routers import causal
from tests.api_client import UNREACHED_THROTTLES
from tests.client import Response, get, request
from tests.conftest import make_topology, wait_until_serving
from tests.edge_load import Load


@dataclasses.dataclass
class Site:
    slug: str
    key: str
    shard: str
    thread: str
    user_token: str


@pytest.fixture(scope="module")
def edge() -> Iterator[LocalTopology]:
    base = make_topology("shardsvc-edge-")
    topo = LocalTopology(dataclasses.replace(base.layout, app_hosts=2), echo=base.echo)
    try:
        topo.up(service=False, migrate=True)
        topo.start_app_hosts(**UNREACHED_THROTTLES)
        topo.ensure_edge()
        yield topo
    finally:
        topo.destroy()
    # Nothing of the network is left behind.
    assert topo.network.namespaces() == [] and not topo.network.bridge_exists()


def make_site(edge: LocalTopology, shard: str) -> Site:
    slug = f"edge-{uuid.uuid4().hex[:10]}"
    made = request("POST", f"{edge.edge_url}/api/ops/sites",
                   body={"slug": slug, "name": slug, "shard": shard},
                   headers={"X-Ops-Token": edge.ops_token()})
    assert made.status == 201, made.body
    key = made.body["api_key"]
    root = f"{edge.edge_url}/api/sites/{slug}"
    thread = request("PUT", f"{root}/threads", body={"url": f"https://x.test/{slug}"},
                     headers={"X-Api-Key": key})
    assert thread.status in (200, 201), thread.body
    token = request("POST", f"{root}/users/token", body={"user_id": "u1", "name": "U"},
                    headers={"X-Api-Key": key})
    assert token.status == 200, token.body
    return Site(slug, key, shard, thread.body["id"], token.body["token"])


@pytest.fixture(scope="module")
def sites(edge: LocalTopology) -> dict[str, Site]:
    return {shard: make_site(edge, shard) for shard in ("shard_0", "shard_1")}


def read_comments(edge: LocalTopology, site: Site, base: str | None = None,
                  **headers: str) -> Response:
    root = f"{base or edge.edge_url}/api/sites/{site.slug}"
    return get(f"{root}/threads/{site.thread}/comments",
               headers={"X-Api-Key": site.key, **headers}, timeout=30)


def reads(edge: LocalTopology, site: Site) -> Load:
    return Load(lambda: read_comments(edge, site), ok=lambda a: a.status == 200)


def reads_and_writes(edge: LocalTopology, site: Site) -> Load:
    """Every other request a comment posted (not retried by nginx once sent: a write must
    never reach a host that is going away)."""
    turn = itertools.count()
    url = f"{edge.edge_url}/api/sites/{site.slug}/threads/{site.thread}/comments"

    def call() -> Response:
        if next(turn) % 2:
            return read_comments(edge, site)
        return request("POST", url, body={"body": "during the restart"},
                       headers={"X-Api-Key": site.key, "X-User-Token": site.user_token})

    return Load(call, ok=lambda a: a.status in (200, 201))


def served(edge: LocalTopology, host: AppHost, route_part: str) -> float:
    """Requests whose route contains `route_part` this app host answered (its own counter)."""
    text = get(f"{edge.app_service(host).url}/metrics").body
    return sum(
        float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
        if line.startswith("shardsvc_requests_total{") and route_part in line
    )


def schema_requests(edge: LocalTopology) -> float:
    """How many requests for the API schema the app hosts answered."""
    return sum(served(edge, host, "openapi") for host in edge.app_hosts())


# ----- static files, the admin, the API docs ---------------------------------------------------
def test_static_assets_are_hashed_immutable_and_gzipped(edge: LocalTopology) -> None:
    page = get(f"{edge.edge_url}/admin/login/", headers={"Accept": "text/html"})
    assert page.status == 200
    styles = re.findall(r'href="(/static/admin/css/[^"]+\.css)"', page.body)
    assert styles and all(re.search(r"\.[0-9a-f]{12}\.css$", s) for s in styles), styles
    raw = urlopen_raw(f"{edge.edge_url}{styles[0]}", {"Accept-Encoding": "gzip"})
    assert raw.status == 200  # the admin's CSS loads
    assert raw.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert raw.headers["Content-Encoding"] == "gzip"
    assert raw.headers["Content-Type"].startswith("text/css")


def test_api_docs_load_with_local_assets_only(edge: LocalTopology) -> None:
    page = get(f"{edge.edge_url}/api/docs", headers={"Accept": "text/html"})
    assert page.status == 200
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.body)
    assert any("swagger-ui-bundle" in a for a in assets), assets
    assert all(a.startswith("/static/") for a in assets), assets
    assert "http://" not in page.body and "https://" not in page.body
    policy = page.headers["Content-Security-Policy"]
    assert "https:" not in policy and "cdn" not in policy
    for asset in assets:
        assert urlopen_raw(f"{edge.edge_url}{asset}", {}).status == 200, asset


# ----- the proxy in front ---------------------------------------------------------------------
def test_requests_reach_app_hosts_in_other_namespaces(edge: LocalTopology) -> None:
    own = os.readlink("/proc/self/ns/net")
    for host in edge.app_hosts():
        pid = read_pid(edge.app_service(host).pidfile)
        assert pid is not None
        assert os.readlink(f"/proc/{pid}/ns/net") != own
        assert host.address.startswith(str(edge.network.subnet.network_address)[:-1])
    request_id = f"edge-{uuid.uuid4().hex}"
    answer = get(f"{edge.edge_url}/readyz", headers={"X-Request-Id": request_id})
    assert answer.status == 200 and answer.body["status"] == "ready"
    assert answer.headers["X-Request-Id"] == request_id  # passed through to the app and back
    made = get(f"{edge.edge_url}/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", made.headers["X-Request-Id"])  # made by nginx


def test_the_app_takes_the_client_address_from_its_proxy(edge: LocalTopology) -> None:
    # The test process reaches an app host from the bridge's address, nginx's own: the app
    # believes its X-Real-IP, so a client named outside the /metrics allow-list is refused.
    host = edge.app_service(edge.app_hosts()[0])
    assert get(f"{host.url}/metrics").status == 200
    named = get(f"{host.url}/metrics", headers={"X-Real-IP": "203.0.113.9"})
    assert named.status == 403 and named.body["error"] == "forbidden"


def test_nginx_errors_are_json(edge: LocalTopology) -> None:
    too_big = request("POST", f"{edge.edge_url}/api/ops/sites", data=b"x" * 70_000,
                      headers={"Content-Type": "application/json"})
    assert too_big.status == 413 and too_big.body["error"] == "too_large"
    metrics = get(f"{edge.edge_url}/metrics")
    assert metrics.status == 403 and metrics.body["error"] == "forbidden"
    missing = get(f"{edge.edge_url}/static/no-such-file.css")
    assert missing.status == 404 and missing.body["error"] == "not_found"


def test_the_proxy_cache_serves_public_gets_and_never_keyed_ones(edge: LocalTopology) -> None:
    url = f"{edge.edge_url}/api/openapi.json?v={uuid.uuid4().hex}"
    first = get(url)
    assert first.status == 200 and first.headers["X-Cache-Status"] == "MISS"
    assert "public" in first.headers["Cache-Control"]
    before = schema_requests(edge)
    second = get(url)
    assert second.status == 200 and second.headers["X-Cache-Status"] == "HIT"
    assert second.body == first.body
    assert schema_requests(edge) == before  # the app never saw the second request
    for private in ({"X-Api-Key": "k"}, {causal.HEADER: "t"}, {"Cookie": "sessionid=s"},
                    {"X-User-Token": "u"}):
        answer = get(url, headers=private)
        assert answer.status == 200 and answer.headers["X-Cache-Status"] == "BYPASS", private
    assert schema_requests(edge) == before + 4  # each of them reached the app


def test_keyed_answers_are_never_cached(edge: LocalTopology, sites: dict[str, Site]) -> None:
    site = sites["shard_0"]
    statuses = [read_comments(edge, site).headers.get("X-Cache-Status") for _ in range(3)]
    assert statuses == ["BYPASS"] * 3


def test_a_causal_token_from_one_host_is_honoured_by_the_other(
    edge: LocalTopology, sites: dict[str, Site]
) -> None:
    site = sites["shard_1"]
    first, second = (edge.app_service(h).url for h in edge.app_hosts())
    body = f"written on host one {uuid.uuid4().hex}"
    posted = request(
        "POST", f"{first}/api/sites/{site.slug}/threads/{site.thread}/comments",
        body={"body": body}, headers={"X-Api-Key": site.key, "X-User-Token": site.user_token},
    )
    assert posted.status == 201, posted.body
    token = posted.headers[causal.HEADER]
    answer = read_comments(edge, site, base=second, **{causal.HEADER: token})
    assert answer.status == 200, answer.body
    assert body in [c["body"] for c in answer.body["items"]]


# ----- hosts failing, restarting, a shard down --------------------------------------------------
def test_killing_an_app_host_under_load_fails_no_request(
    edge: LocalTopology, sites: dict[str, Site]
) -> None:
    victim = edge.app_hosts()[0]
    with reads(edge, sites["shard_0"]) as load:
        load.wait_for(50)
        edge.stop_app_host(victim, kill=True)
        load.wait_for(200)
    assert load.outcomes["ok"] >= 250
    assert load.outcomes["failed"] == 0, load.failures[:5]
    assert not edge.app_service(victim).running()
    edge.start_app_host(victim, **UNREACHED_THROTTLES)
    edge.wait_app_host_ready(victim)


def test_a_rolling_restart_under_load_fails_no_request(
    edge: LocalTopology, sites: dict[str, Site]
) -> None:
    masters = {h.name: read_pid(edge.app_service(h).pidfile) for h in edge.app_hosts()}
    with reads_and_writes(edge, sites["shard_1"]) as load:
        load.wait_for(50)
        edge.restart_app_hosts_rolling(drain_seconds=0.5)
        load.wait_for(50)
    assert load.outcomes["failed"] == 0, load.failures[:5]
    assert load.outcomes["ok"] >= 100
    for host in edge.app_hosts():
        now = read_pid(edge.app_service(host).pidfile)
        assert now is not None and now != masters[host.name]  # every host was restarted
    assert "down;" not in (edge.edge_dir / "upstream.conf").read_text()


def test_one_shard_down_keeps_every_host_in_rotation(
    edge: LocalTopology, sites: dict[str, Site]
) -> None:
    edge.stop_node("shard_0", mode="immediate")
    try:
        before = {h.name: served(edge, h, "comments") for h in edge.app_hosts()}
        with reads(edge, sites["shard_1"]) as load:
            load.wait_for(200)
        assert load.outcomes["failed"] == 0, load.failures[:5]
        # Both hosts served the other shard's tenant: neither left nginx's rotation.
        for host in edge.app_hosts():
            assert served(edge, host, "comments") > before[host.name], host.name
        for host in edge.app_hosts():
            ready = get(f"{edge.app_service(host).url}/readyz", timeout=20)
            assert ready.status == 200, (host.name, ready.body)
        down = read_comments(edge, sites["shard_0"])
        assert down.status == 503  # the shard's own tenants get the app's answer
    finally:
        edge.start_node("shard_0")
        wait_until_serving(edge)


def urlopen_raw(url: str, headers: dict[str, str]) -> Any:
    """The raw answer (no decoding, so Content-Encoding can be seen)."""
    with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as r:
        r.read()
        return r
