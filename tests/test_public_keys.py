"""Publishable keys and CORS: a site's pages call the API from the origins its operator allowed,
with a key that can read and write only as an end user the site's backend signed; the secret key
is refused from any web page."""

from __future__ import annotations

import pytest

from tests.api_client import SiteClient, create_site
from tests.client import Response, request, wait_until

PAGE = "http://blog.localhost:8080"


def lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def set_origins(service, topology, slug: str, origins: list[str], **extra) -> Response:
    return request("PUT", f"{service.url}/api/ops/sites/{slug}/origins",
                   body={"origins": origins, **extra},
                   headers={"X-Ops-Token": topology.ops_token()})


@pytest.fixture(scope="module")
def site(service, topology) -> SiteClient:
    made = create_site(service, topology, prefix="pub")
    answer = set_origins(service, topology, made.slug, [PAGE + "/", "https://Other.example:443"])
    assert answer.status == 200, answer.body
    assert answer.body["origins"] == ["http://blog.localhost:8080", "https://other.example"]
    assert answer.body["public_key"] == made.public_key
    return made


def from_page(site: SiteClient, method: str, path: str, body=None, *, origin: str = PAGE,
              user: str = "", key: str | None = None) -> Response:
    headers = {"Origin": origin}
    if user:
        headers["X-User-Token"] = user
    return site.call(method, path, body, headers=headers,
                     key=site.public_key if key is None else key)


def test_a_new_site_gets_a_publishable_key(service, topology) -> None:
    answer = request("POST", f"{service.url}/api/ops/sites", body={"slug": "pk-new-site",
                     "name": "N"}, headers={"X-Ops-Token": topology.ops_token()})
    assert answer.status == 201, answer.body
    assert answer.body["public_key"].startswith("pk_")
    assert answer.body["api_key"].startswith("sk_")


def test_origins_are_checked_and_unknown_sites_are_404(service, topology, site) -> None:
    bad = set_origins(service, topology, site.slug, ["blog.example/path"])
    assert bad.status == 422 and "scheme://host" in bad.body["message"]
    assert set_origins(service, topology, "no-such-site", [PAGE]).status == 404


def test_a_preflight_from_an_allowed_origin_is_answered_and_cached(site) -> None:
    answer = request("OPTIONS", f"{site.root}/threads/1/comments", headers={
        "Origin": PAGE, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,x-api-key,x-user-token,x-causal-token"})
    headers = lower(answer.headers)
    assert answer.status == 200
    assert headers["access-control-allow-origin"] == PAGE
    assert headers["access-control-max-age"] == "7200"
    assert {"x-api-key", "x-user-token", "x-causal-token", "content-type"} <= {
        h.strip() for h in headers["access-control-allow-headers"].split(",")}
    assert "access-control-allow-credentials" not in headers


def test_another_origin_gets_no_cors_and_a_403(site) -> None:
    evil = "http://evil.localhost:8080"
    preflight = request("OPTIONS", f"{site.root}/threads/1/comments", headers={
        "Origin": evil, "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in lower(preflight.headers)
    answer = from_page(site, "PUT", "/threads", {"url": f"{PAGE}/p"}, origin=evil)
    assert answer.status == 403 and "allowed origins" in answer.body["message"]
    assert "access-control-allow-origin" not in lower(answer.headers)
    # Without any Origin (a script off the browser) the publishable key is refused too.
    no_origin = site.call("PUT", "/threads", {"url": f"{PAGE}/p"},
                          key=site.public_key)
    assert no_origin.status == 403


def test_the_publishable_key_reads_and_writes_as_a_signed_user(site) -> None:
    thread = from_page(site, "PUT", "/threads", {"url": f"{PAGE}/posts/1"})
    assert thread.status == 201, thread.body
    assert lower(thread.headers)["access-control-allow-origin"] == PAGE
    assert "X-Causal-Token" in lower(thread.headers)["access-control-expose-headers"]
    user = site.as_user("reader-1", "Reader").user_token  # signed by the backend's secret key
    path = f"/threads/{thread.body['id']}/comments"
    posted = from_page(site, "POST", path, {"body": "from the page"}, user=user)
    assert posted.status == 201, posted.body
    assert posted.body["author"] == "reader-1"
    page = from_page(site, "GET", path)
    assert [c["body"] for c in page.body["items"]] == ["from the page"]
    # Writing needs the user token: the key alone names no one.
    assert from_page(site, "POST", path, {"body": "anonymous"}).status == 401


def test_the_publishable_key_cannot_sign_users_or_make_threads_elsewhere(site) -> None:
    token = from_page(site, "POST", "/users/token", {"user_id": "admin"})
    assert token.status == 403 and "secret API key" in token.body["message"]
    foreign = from_page(site, "PUT", "/threads", {"url": "https://elsewhere.example/x"})
    assert foreign.status == 403 and "allowed origins" in foreign.body["message"]


def test_a_secret_key_from_a_web_page_is_refused(site) -> None:
    answer = site.call("GET", "/threads/counts?ids=1", headers={"Origin": PAGE})
    assert answer.status == 403
    assert "secret API key" in answer.body["message"] and "pk_" in answer.body["message"]
    assert site.call("GET", "/threads/counts?ids=1").status == 200  # from the backend: fine


def test_a_publishable_key_of_another_site_finds_nothing(service, topology, site) -> None:
    other = create_site(service, topology, prefix="pub-other")
    answer = other.call("GET", "/threads/counts?ids=1", headers={"Origin": PAGE},
                        key=site.public_key)
    assert answer.status == 404


def test_new_origins_reach_cors_within_the_key_cache_time(service, topology) -> None:
    made = create_site(service, topology, prefix="pub-late")
    late = "http://late.localhost:9000"
    preflight = {"Origin": late, "Access-Control-Request-Method": "GET"}
    before = request("OPTIONS", f"{made.root}/threads/counts", headers=preflight)
    assert "access-control-allow-origin" not in lower(before.headers)
    assert set_origins(service, topology, made.slug, [late]).status == 200
    # Each worker may keep what it looked up for KEY_CACHE_SECONDS (10 s by default).
    wait_until(lambda: lower(request("OPTIONS", f"{made.root}/threads/counts",
                                     headers=preflight).headers)
               .get("access-control-allow-origin") == late, timeout=15, what="the new origin")
