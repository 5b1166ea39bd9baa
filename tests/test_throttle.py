"""Throttling through the real service: failed credential checks per client address, writes per
end user, admin logins; counted in the topology's Redis and shared by both gunicorn workers.

The service here has small limits of its own. Each test calls from its own loopback address
(127.0.0.x: every address of 127/8 reaches a service bound to 127.0.0.1), so the tests never
share a counter, and the limits count per day so no window ends in the middle of a test.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from deploy.topology import ServiceProcess
from routers.causal import HEADER
from tests.api_client import SiteClient, create_site
from tests.client import Response, wait_until
from tests.throttle_client import (
    AUTH_LIMIT,
    LOGIN_LIMIT,
    WRITE_LIMIT,
    assert_throttled,
    call,
    control_queries,
    well_formed_key,
)


def test_wrong_keys_are_refused_before_any_lookup_past_the_limit(throttled, topology) -> None:
    site = create_site(throttled, topology, prefix="thr-key")
    me, other = "127.0.0.21", "127.0.0.22"
    url = f"{site.root}/threads/counts?ids=1"
    assert call(me, "GET", url, headers={"X-Api-Key": site.key}).status == 200  # warm caches
    before = control_queries(throttled)

    never_seen = well_formed_key()
    wrong = [never_seen, never_seen, "sk_wrong", "no-key-at-all", well_formed_key()]
    assert len(wrong) == AUTH_LIMIT
    for key in wrong:
        answer = call(me, "GET", url, headers={"X-Api-Key": key})
        assert answer.status == 401, answer.body
    # Two never-seen well-formed keys, one lookup each: the repeat was answered from the cache,
    # the malformed ones never looked up.
    assert control_queries(throttled) - before == 2

    # Over the limit: even the right key, and any number of new guesses, get 429 unlooked-up.
    before = control_queries(throttled)
    assert_throttled(call(me, "GET", url, headers={"X-Api-Key": site.key}))
    for _ in range(20):
        assert_throttled(call(me, "GET", url, headers={"X-Api-Key": well_formed_key()}))
    assert control_queries(throttled) - before == 0

    # Another address is not affected; a request without a key is not a guess (401).
    assert call(other, "GET", url, headers={"X-Api-Key": site.key}).status == 200
    assert call(other, "GET", url).status == 401


def test_a_blocked_address_is_refused_where_its_key_is_known_and_its_page_cached(
        throttled, topology) -> None:
    # A page read whose key a worker already holds makes its address's check with the page's
    # own Redis read; a row read checks first. Either way, once the address is blocked, its
    # right key gets 429 and nothing else.
    site = create_site(throttled, topology, prefix="thr-known")
    me, other = "127.0.0.31", "127.0.0.32"
    headers = {"X-Api-Key": site.key}
    thread = f"{site.root}/threads/{site.thread()}"
    page = f"{thread}/comments"
    # The thread was just made on the primary: readable once its replica has it.
    wait_until(lambda: call(other, "GET", thread, headers=headers).status == 200, timeout=10,
               what="the new thread on the replica")
    for source in (me, other):
        for _ in range(6):  # every worker knows the key, and the page is in the cache
            answer = call(source, "GET", page, headers=headers)
            assert answer.status == 200, answer.body
            assert call(source, "GET", thread, headers=headers).status == 200
    assert answer.headers["X-Cache"] == "hit", answer.headers

    for _ in range(AUTH_LIMIT):
        assert call(me, "GET", page, headers={"X-Api-Key": well_formed_key()}).status == 401

    for _ in range(6):
        assert_throttled(call(me, "GET", page, headers=headers))
        assert_throttled(call(me, "GET", thread, headers=headers))
    # Another address's reads are untouched, from the cache.
    answer = call(other, "GET", page, headers=headers)
    assert answer.status == 200 and answer.headers["X-Cache"] == "hit", answer.headers


def test_a_concurrent_flood_of_wrong_keys_is_cut_off_near_the_limit(throttled, topology) -> None:
    site = create_site(throttled, topology, prefix="thr-flood")
    me, threads, sent = "127.0.0.23", 8, 200
    url = f"{site.root}/threads/counts?ids=1"
    assert call(me, "GET", url, headers={"X-Api-Key": site.key}).status == 200
    before = control_queries(throttled)
    with ThreadPoolExecutor(max_workers=threads) as pool:
        answers = list(pool.map(
            lambda _: call(me, "GET", url, headers={"X-Api-Key": well_formed_key()}),
            range(sent),
        ))
    statuses = [a.status for a in answers]
    assert set(statuses) <= {401, 429}, statuses
    looked_up = statuses.count(401)
    # Checks already under way when the count reached the limit still finish: at most one
    # per other thread.
    assert AUTH_LIMIT <= looked_up <= AUTH_LIMIT + threads - 1, statuses
    assert all(int(a.headers["Retry-After"]) >= 1 for a in answers if a.status == 429)
    assert control_queries(throttled) - before <= looked_up


def test_wrong_user_tokens_are_throttled_and_write_nothing(throttled, topology) -> None:
    site = create_site(throttled, topology, prefix="thr-tok")
    other_site = create_site(throttled, topology, prefix="thr-tok2").as_user("mallory")
    alice = site.as_user("alice")
    thread = site.thread()
    me, other = "127.0.0.24", "127.0.0.25"
    path = f"{site.root}/threads/{thread}/comments"

    def post(source: str, token: str) -> Response:
        return call(source, "POST", path, body={"body": "hi"},
                    headers={"X-Api-Key": site.key, "X-User-Token": token})

    wrong = ["forged:token", alice.user_token + "x", other_site.user_token, "a" * 300,
             alice.user_token[:-3]]
    assert len(wrong) == AUTH_LIMIT
    for token in wrong:
        answer = post(me, token)
        assert answer.status == 401, answer.body
    assert_throttled(post(me, alice.user_token))  # the real token too, from this address
    assert_throttled(call(me, "GET", f"{site.root}/threads/{thread}",
                          headers={"X-Api-Key": site.key}))

    posted = post(other, alice.user_token)
    assert posted.status == 201, posted.body
    listed = call(other, "GET", f"{path}?limit=100",
                  headers={"X-Api-Key": site.key, HEADER: posted.headers[HEADER]})
    assert listed.status == 200
    assert [c["author"] for c in listed.body["items"]] == ["alice"]


def test_writes_past_the_per_user_limit_get_429_and_write_nothing(throttled, topology) -> None:
    site = create_site(throttled, topology, prefix="thr-write")
    alice, bob = site.as_user("alice"), site.as_user("bob")
    thread = site.thread()
    me = "127.0.0.26"

    def write(user: SiteClient, method: str, path: str, body: Any = None,
              causal_token: str = "") -> Response:
        headers = {"X-Api-Key": site.key, "X-User-Token": user.user_token}
        if causal_token:  # read our own writes: from a replica that has them, or the primary
            headers[HEADER] = causal_token
        return call(me, method, f"{site.root}{path}", body=body, headers=headers)

    made = [write(alice, "POST", f"/threads/{thread}/comments", {"body": f"c{i}"})
            for i in range(WRITE_LIMIT - 1)]
    assert [m.status for m in made] == [201] * (WRITE_LIMIT - 1)
    first = made[0].body["id"]
    assert write(alice, "PUT", f"/comments/{first}/vote", {"value": 1}).status == 200
    # The limit is reached: every kind of write is refused, none is applied.
    assert_throttled(write(alice, "POST", f"/threads/{thread}/comments", {"body": "more"}))
    assert_throttled(write(alice, "PATCH", f"/comments/{first}", {"body": "edited"}))
    assert_throttled(write(alice, "PUT", f"/comments/{first}/vote", {"value": -1}))
    assert_throttled(write(alice, "DELETE", f"/comments/{first}"))

    # Another user of the same site writes on; reads stay open to alice.
    posted = write(bob, "POST", f"/threads/{thread}/comments", {"body": "bob"})
    assert posted.status == 201, posted.body
    listed = write(alice, "GET", f"/threads/{thread}/comments?limit=100&order=oldest",
                   causal_token=posted.headers[HEADER])
    assert listed.status == 200
    items = listed.body["items"]
    assert [c["body"] for c in items] == [f"c{i}" for i in range(WRITE_LIMIT - 1)] + ["bob"]
    assert items[0]["score"] == 1  # the refused down-vote changed nothing


def test_the_ops_token_is_throttled_and_compared_as_bytes(throttled, topology) -> None:
    me = "127.0.0.27"
    url = f"{throttled.url}/api/ops/sites"
    for token in ["wrong", "caf\u00e9", "x" * 40, "wrong", "also-wrong"]:
        answer = call(me, "GET", url, headers={"X-Ops-Token": token})
        assert answer.status == 401, answer.body  # non-ASCII too: no 500 from compare_digest
    assert_throttled(call(me, "GET", url, headers={"X-Ops-Token": topology.ops_token()}))
    assert call("127.0.0.28", "GET", url,
                headers={"X-Ops-Token": topology.ops_token()}).status == 200


# ----- admin login

CSRF_FIELD_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class AdminBrowser:
    """A login form client from one loopback address, keeping its cookies by hand."""

    def __init__(self, service: ServiceProcess, source: str) -> None:
        self.service, self.source = service, source
        self.cookies: dict[str, str] = {}

    def _request(self, method: str, form: dict[str, str] | None = None) -> Response:
        cookie = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        answer = call(self.source, method, f"{self.service.url}/admin/login/", form=form,
                      headers={"Cookie": cookie, "Accept": "text/html"} if cookie else None)
        for line in filter(None, answer.headers["Set-Cookie"].split("\n")):
            key, _, rest = line.partition("=")
            self.cookies[key] = rest.split(";", 1)[0]
        return answer

    def login(self, username: str, password: str) -> Response:
        page = self._request("GET")
        assert page.status == 200, page.status
        token = CSRF_FIELD_RE.search(page.body)
        assert token, "no CSRF field on the login page"
        return self._request("POST", {"username": username, "password": password,
                                      "csrfmiddlewaretoken": token.group(1), "next": "/admin/"})


@pytest.fixture(scope="module")
def staff(django_db) -> Iterator[dict[str, str]]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    users = {f"admin-{uuid.uuid4().hex[:8]}": uuid.uuid4().hex for _ in range(2)}
    for username, password in users.items():
        User.objects.db_manager("default").create_superuser(username, "", password)
    # The login reads users through the router, i.e. from a control replica.
    wait_until(lambda: User.objects.using("default_replica_1")
               .filter(username__in=list(users)).count() == len(users),
               timeout=10, what="the control replica to have the users")
    yield users
    User.objects.db_manager("default").filter(username__in=list(users)).delete()


def test_admin_logins_are_limited_per_address_and_per_user(throttled, staff) -> None:
    (ann, ann_password), (ben, ben_password) = staff.items()
    attacker = AdminBrowser(throttled, "127.0.0.29")
    for _ in range(LOGIN_LIMIT):
        answer = attacker.login(ann, "not-the-password")
        assert answer.status == 200 and "correct username and password" in answer.body
    # The right password no longer gets in: not from this address, not for this user.
    assert_throttled(attacker.login(ann, ann_password))
    assert_throttled(attacker.login(ben, ben_password))
    assert_throttled(AdminBrowser(throttled, "127.0.0.30").login(ann, ann_password))
    # Another address and another user are unaffected.
    answer = AdminBrowser(throttled, "127.0.0.31").login(ben, ben_password)
    assert answer.status == 302 and answer.headers["Location"] == "/admin/", answer.status


# ----- without the service


def unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("redis", ["reachable", "unreachable"])
def test_counters_fail_open_when_redis_is_unreachable(redis, request) -> None:
    """With nothing listening at the cache's address every check lets the caller through and
    nothing raises; the same calls against the topology's Redis throttle at the limit."""
    from django.conf import settings
    from django.http import HttpResponse
    from django.test import RequestFactory, override_settings

    from sites import throttle

    cache = dict(settings.CACHES["default"])
    if redis == "reachable":
        request.getfixturevalue("topology")
        cache["KEY_PREFIX"] = f"test-{uuid.uuid4().hex[:8]}"  # counters of this test only
    else:
        cache["LOCATION"] = f"redis://127.0.0.1:{unused_port()}/0"
    factory = RequestFactory()
    login = throttle.throttled_login(lambda request: HttpResponse("the login form"))
    outcomes = []
    with override_settings(CACHES={"default": cache}, THROTTLE_AUTH_FAILURES="2/d",
                           THROTTLE_WRITES="2/d", THROTTLE_ADMIN_LOGIN="2/d"):
        for _ in range(3):
            attempt = factory.get("/", REMOTE_ADDR="127.0.0.40")
            form = factory.post("/admin/login/", {"username": "ann"}, REMOTE_ADDR="127.0.0.40")
            try:
                throttle.refuse_failing_client(attempt)
                throttle.count_failed_check(attempt)
                throttle.count_write(attempt, 1, "alice")
                throttle.count_failed_login(None, {"username": "ann"}, form)
                outcomes.append(login(form).status_code)
            except throttle.Throttled as exc:
                assert exc.retry_after >= 1
                outcomes.append(429)
    assert outcomes == ([200, 429, 429] if redis == "reachable" else [200, 200, 200])


def test_a_key_of_the_wrong_shape_is_refused_without_any_lookup() -> None:
    from django.conf import settings
    from django.test import override_settings

    from sites.keys import KEY_SHAPE, owner_of_key
    from sites.models import Site

    assert all(KEY_SHAPE.fullmatch(Site.new_key()) for _ in range(200))
    dead = {"default": {**settings.CACHES["default"],
                        "LOCATION": f"redis://127.0.0.1:{unused_port()}/0"}}
    # Neither the cache (unreachable here) nor the database (not started) is asked.
    with override_settings(CACHES=dead):
        for key in ["", "sk_", "sk_wrong", "x" * 46, "sk_" + "a" * 42, "sk_" + "a" * 44,
                    "sk_" + "a" * 42 + "=", " sk_" + "a" * 43, "sk_" + "a" * 43 + "\n"]:
            assert owner_of_key(key) is None, key


def test_a_malformed_rate_stops_start_up_with_the_fix() -> None:
    env = {**os.environ, "SHARDSVC_THROTTLE_WRITES": "60 per minute"}
    done = subprocess.run([sys.executable, "-c", "import django; django.setup()"], env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "SHARDSVC_THROTTLE_WRITES='60 per minute' is not a rate" in done.stderr
    assert "e.g. 20/m" in done.stderr
