"""Secrets, signing and production defaults: no start without a secret key, `check --deploy`
clean for the production profile, separate signing domains and key fallbacks, key rotation that
revokes user tokens, framing and CSP headers on HTML pages, and who may scrape /metrics."""

from __future__ import annotations

import http.client
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.core import signing
from django.test import RequestFactory, override_settings

from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from shards.runtime import runtime
from tests.api_client import create_site
from tests.client import get, wait_until

PROJECT_DIR = Path(__file__).resolve().parent.parent
# What the topology manager used to start every service with: anyone could sign with it.
OLD_DEFAULT_KEY = "insecure-local-topology-key-change-me"
USER_SALT = "shardsvc.user"


def production_env(topology: LocalTopology, **changes: str | None) -> dict[str, str]:
    """The topology's environment without its plain-HTTP switch: the production profile."""
    env = topology.service_env()
    env.pop("SHARDSVC_HTTPS", None)
    env.pop("SHARDSVC_DEBUG", None)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=env,
        capture_output=True, text=True, timeout=120, check=False,
    )


# ----- no secret key, no start --------------------------------------------------------------


def test_the_service_refuses_to_start_without_a_secret_key(topology: LocalTopology) -> None:
    env = production_env(topology, SHARDSVC_SECRET_KEY=None,
                         SHARDSVC_BIND=f"127.0.0.1:{topology.layout.http_port + 3}")
    # Gunicorn as the topology manager starts it (preload_app: the master loads the settings).
    started = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", str(PROJECT_DIR / "deploy" / "gunicorn.conf.py"),
         "project.wsgi:application"],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert started.returncode != 0
    assert "SHARDSVC_SECRET_KEY is not set" in started.stderr, started.stderr[-3000:]
    assert "secrets.token_urlsafe" in started.stderr  # says how to make one
    assert "Booting worker" not in started.stderr

    checked = manage(env, "check")
    assert checked.returncode == 1
    assert "Error: SHARDSVC_SECRET_KEY is not set" in checked.stderr
    assert "Traceback" not in checked.stderr  # the message, not Django's setup internals
    # An empty value is no key either.
    assert manage({**env, "SHARDSVC_SECRET_KEY": ""}, "check").returncode == 1
    # A development run may go without one, and says nothing.
    assert manage({**env, "SHARDSVC_DEBUG": "1"}, "check").returncode == 0


def test_the_topology_keeps_its_secret_key_private(topology: LocalTopology) -> None:
    path = topology.layout.root / "secret-key"
    key = topology.secret_key()
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(key) >= 50 and key != OLD_DEFAULT_KEY
    assert topology.secret_key() == key  # made once per topology
    assert topology.service_env()["SHARDSVC_SECRET_KEY"] == key


# ----- check --deploy --------------------------------------------------------------------------


def test_check_deploy_passes_for_the_production_profile(topology: LocalTopology) -> None:
    result = manage(production_env(topology), "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "System check identified no issues" in result.stdout, result.stdout
    assert "WARNINGS" not in result.stdout + result.stderr


def test_check_deploy_flags_the_plain_http_profile(topology: LocalTopology) -> None:
    # The local topology's profile is not for production: the same check says why.
    result = manage(production_env(topology, SHARDSVC_HTTPS="0"), "check", "--deploy",
                    "--fail-level", "WARNING")
    assert result.returncode == 1
    for check_id in ("security.W008", "security.W012", "security.W016"):
        assert check_id in result.stderr, result.stderr


# ----- signing domains and key rotation --------------------------------------------------------


def test_user_and_causal_tokens_are_separate_signing_domains() -> None:
    causal_token = causal.encode({"shard_0": 0x1000})
    user_token = signing.dumps({"t": 1, "u": "ann", "n": "", "g": 1}, salt=USER_SALT)
    with pytest.raises(signing.BadSignature):
        signing.loads(causal_token, salt=USER_SALT)
    assert causal.decode(user_token) is None
    assert causal.decode(causal_token) == ({"shard_0": 0x1000}, {})


def test_a_rotated_secret_stays_valid_as_a_fallback() -> None:
    old, new = "old-" + "k" * 60, "new-" + "k" * 60
    with override_settings(SECRET_KEY=old):
        token = causal.encode({"shard_0": 42})
        user_token = signing.dumps({"u": "ann"}, salt=USER_SALT)
    with override_settings(SECRET_KEY=new, SECRET_KEY_FALLBACKS=[old]):
        assert causal.decode(token) == ({"shard_0": 42}, {})
        assert signing.loads(user_token, salt=USER_SALT) == {"u": "ann"}
        # New tokens are signed with the new key only.
        fresh = causal.encode({"shard_0": 43})
    with override_settings(SECRET_KEY=new, SECRET_KEY_FALLBACKS=[]):
        assert causal.decode(token) is None  # the old key dropped: its tokens die
        assert causal.decode(fresh) == ({"shard_0": 43}, {})


@pytest.mark.usefixtures("django_db")
def test_tokens_signed_with_the_old_default_key_are_refused(service: ServiceProcess,
                                                            topology: LocalTopology) -> None:
    site = create_site(service, topology, prefix="forge").as_user("real")
    thread = site.thread()
    comment = site.comment(thread)
    from shards.models import Tenant

    tenant_id = Tenant.objects.using("default").get(slug=site.slug).id
    forged = signing.dumps({"t": tenant_id, "u": "real", "n": "", "g": 1}, salt=USER_SALT,
                           key=OLD_DEFAULT_KEY, compress=True)
    answer = site.call("DELETE", f"/comments/{comment['id']}", headers={"X-User-Token": forged})
    assert answer.status == 401, answer.body
    assert answer.body["error"] == "unauthorized"
    with override_settings(SECRET_KEY=OLD_DEFAULT_KEY):
        forged_causal = causal.encode({"shard_0": 1})
    assert causal.decode(forged_causal) is None
    # The comment is still there.
    assert site.call("GET", f"/threads/{thread}/comments").body["items"][0]["id"] == comment["id"]


@pytest.mark.usefixtures("django_db")
def test_rotating_a_site_key_revokes_its_user_tokens(service: ServiceProcess,
                                                     topology: LocalTopology) -> None:
    from django.core.cache import cache

    from sites import keys
    from sites.models import Site, hash_key
    from sites.service import rotate_key

    site = create_site(service, topology, prefix="rotate")
    user = site.as_user("ann")
    thread = user.thread()
    assert user.call("POST", f"/threads/{thread}/comments", {"body": "before"},
                     user=True).status == 201
    row = Site.objects.using("default").get(tenant__slug=site.slug)
    assert row.key_generation == 1
    # A token minted before tokens carried a generation belongs to the first one.
    legacy = signing.dumps({"t": row.tenant_id, "u": "old", "n": ""}, salt=USER_SALT,
                           compress=True)
    assert user.call("POST", f"/threads/{thread}/comments", {"body": "legacy"},
                     headers={"X-User-Token": legacy}).status == 201

    new_key = rotate_key(row)  # what the admin's action does
    assert Site.objects.using("default").get(pk=row.pk).key_generation == 2
    # A lookup that read the row just before the rotation cannot put the old key back.
    assert not cache.add(keys._cache_key(hash_key(site.key)), (row.tenant_id, 1), timeout=60)
    assert keys.owner_of_key(site.key) is None
    assert keys.owner_of_key(new_key) == (row.tenant_id, 2)
    # Every worker drops the old key within its local cache's lifetime.
    wait_until(lambda: user.call("GET", f"/threads/{thread}").status == 401,
               timeout=runtime.conf().key_cache_seconds + 2, what="the old key to stop working")

    for token in (user.user_token, legacy):
        answer = user.call("POST", f"/threads/{thread}/comments", {"body": "after"},
                           key=new_key, headers={"X-User-Token": token})
        assert answer.status == 401, answer.body
        assert answer.body["error"] == "unauthorized"
        assert "rotated" in answer.body["message"]

    site.key = new_key
    fresh = site.as_user("ann")
    answer = fresh.call("POST", f"/threads/{thread}/comments", {"body": "after"}, user=True)
    assert answer.status == 201, answer.body
    bodies = {c["body"] for c in fresh.call("GET", f"/threads/{thread}/comments").body["items"]}
    assert bodies == {"before", "legacy", "after"}  # nothing written by the revoked tokens


# ----- framing and CSP -------------------------------------------------------------------------


def test_admin_pages_cannot_be_framed_and_carry_a_csp(service: ServiceProcess) -> None:
    answer = get(f"{service.url}/admin/login/", headers={"Accept": "text/html"})
    assert answer.status == 200
    assert answer.headers["X-Frame-Options"] == "DENY"
    policy = answer.headers["Content-Security-Policy"]
    directives = dict(d.strip().split(" ", 1) for d in policy.split(";"))
    assert directives["script-src"] == "'self'"
    assert directives["style-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    # The admin's own page needs nothing the policy forbids: no inline script or style.
    page = answer.body
    inline_scripts = [
        tag for tag in re.findall(r"<script\b[^>]*>", page)
        if "src=" not in tag and "application/json" not in tag
    ]
    assert inline_scripts == []
    assert "<style" not in page and " style=" not in page


def test_the_api_docs_get_a_policy_that_lets_swagger_ui_load(service: ServiceProcess) -> None:
    answer = get(f"{service.url}/api/docs", headers={"Accept": "text/html"})
    assert answer.status == 200
    assert answer.headers["X-Frame-Options"] == "DENY"
    directives = dict(
        d.strip().split(" ", 1) for d in answer.headers["Content-Security-Policy"].split(";")
    )
    assert directives["frame-ancestors"] == "'none'"
    scripts = re.findall(r'<script src="([^"]+)"', answer.body)
    assert scripts, answer.body[:2000]
    for url in scripts:
        origin = re.match(r"https://[^/]+", url)
        assert origin is None or origin.group(0) in directives["script-src"], url
    if re.search(r"<script>", answer.body):  # the CDN page starts Swagger UI inline
        assert "'unsafe-inline'" in directives["script-src"]


def test_json_answers_carry_no_csp(service: ServiceProcess) -> None:
    answer = get(f"{service.url}/healthz")
    assert answer.status == 200
    assert "Content-Security-Policy" not in answer.headers


# ----- /metrics access -------------------------------------------------------------------------

METRICS_TOKEN = "scrape-" + "t" * 40


@pytest.fixture(scope="module")
def guarded(topology: LocalTopology) -> Iterator[ServiceProcess]:
    """A service in the production profile (HTTPS behind a proxy) whose /metrics allows only a
    network the tests are not on, or the token."""
    svc = topology.start_service(
        name="production", port=topology.layout.http_port + 7, SHARDSVC_WORKERS="1",
        SHARDSVC_HTTPS="1",
        SHARDSVC_METRICS_ALLOW="10.0.0.0/8,fd00::/8", SHARDSVC_METRICS_TOKEN=METRICS_TOKEN,
    )
    yield svc
    svc.stop()


def raw_get(service: ServiceProcess, path: str,
            headers: dict[str, str] | None = None) -> tuple[int, list[tuple[str, str]]]:
    """Status and every header line, redirects not followed."""
    conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        answer.read()
        return answer.status, answer.getheaders()
    finally:
        conn.close()


def test_the_production_profile_sends_plain_http_to_https(guarded: ServiceProcess) -> None:
    status, headers = raw_get(guarded, "/api/openapi.json")
    assert status == 301
    assert dict(headers)["Location"] == f"https://127.0.0.1:{guarded.port}/api/openapi.json"
    # Probes reach each host directly in plain HTTP.
    assert raw_get(guarded, "/healthz")[0] == 200
    # Behind the TLS proxy (which sets X-Forwarded-Proto): HSTS, and cookies only for HTTPS.
    status, headers = raw_get(guarded, "/admin/login/", {"X-Forwarded-Proto": "https"})
    assert status == 200
    assert dict(headers)["Strict-Transport-Security"] == "max-age=31536000"
    assert dict(headers)["X-Frame-Options"] == "DENY"
    cookies = [value for name, value in headers if name.lower() == "set-cookie"]
    assert cookies and all("; secure" in c.lower() for c in cookies), cookies


def test_metrics_from_a_network_not_allowed_need_the_token(guarded: ServiceProcess) -> None:
    url = f"{guarded.url}/metrics"
    refused = get(url)
    assert refused.status == 403
    assert refused.body["error"] == "forbidden"
    assert "SHARDSVC_METRICS_TOKEN" in refused.body["message"]
    for header in (f"Bearer {METRICS_TOKEN}x", "Bearer ", f"Basic {METRICS_TOKEN}",
                   METRICS_TOKEN):
        assert get(url, headers={"Authorization": header}).status == 403, header
    # Claiming to be someone else changes nothing: nothing in front of the service is trusted.
    assert get(url, headers={"X-Forwarded-For": "10.1.2.3"}).status == 403
    allowed = get(url, headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert allowed.status == 200
    assert "shardsvc_requests_total" in allowed.body


def test_metrics_from_loopback_need_no_token_but_refuse_a_wrong_one(
    service: ServiceProcess,
) -> None:
    assert get(f"{service.url}/metrics").status == 200  # the default allows loopback
    # No token is configured there: any token is a wrong one.
    wrong = get(f"{service.url}/metrics", headers={"Authorization": "Bearer anything"})
    assert wrong.status == 403
    assert wrong.body["error"] == "forbidden"


def test_a_bad_metrics_network_stops_start_up(topology: LocalTopology) -> None:
    result = manage(production_env(topology, SHARDSVC_METRICS_ALLOW="10.0.0.0/8,localhost"),
                    "check")
    assert result.returncode == 1
    assert "SHARDSVC_METRICS_ALLOW" in result.stderr and "CIDR" in result.stderr


@pytest.mark.parametrize(
    ("remote", "authorization", "allowed"),
    [
        ("127.0.0.1", None, True),
        ("::1", None, True),
        ("::ffff:10.2.3.4", None, True),  # IPv4 client of a dual-stack listener
        ("10.2.3.4", None, True),
        ("192.168.1.5", None, False),
        ("2001:db8::1", None, False),
        ("", None, False),
        ("192.168.1.5", f"Bearer {METRICS_TOKEN}", True),
        ("192.168.1.5", f"bearer {METRICS_TOKEN}", True),
        ("192.168.1.5", f"Bearer {METRICS_TOKEN[:-1]}", False),
        ("127.0.0.1", "Bearer wrong", False),
    ],
)
def test_scrape_allowed(remote: str, authorization: str | None, allowed: bool) -> None:
    import ipaddress

    from project.metrics_endpoint import scrape_allowed

    headers = {"HTTP_AUTHORIZATION": authorization} if authorization else {}
    request = RequestFactory().get("/metrics", REMOTE_ADDR=remote,
                                   HTTP_X_FORWARDED_FOR="127.0.0.1", **headers)
    networks = [ipaddress.ip_network(n) for n in ("127.0.0.0/8", "::1/128", "10.0.0.0/8")]
    with override_settings(METRICS_ALLOW=networks, METRICS_TOKEN=METRICS_TOKEN):
        assert scrape_allowed(request) is allowed
