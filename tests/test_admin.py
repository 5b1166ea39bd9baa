"""The Django admin through the real service: a superuser logs in (session in the control
database, requests spread over both gunicorn workers), loads the changelists of sites, tenants and
shards, rotates a site's key, and moves a tenant by hand."""

from __future__ import annotations

import http.cookiejar
import re
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from deploy.topology import ServiceProcess
from tests.client import get, wait_until

pytestmark = pytest.mark.usefixtures("django_db")

CSRF_FIELD_RE = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        return None  # hand 3xx back to the caller


@dataclass
class Page:
    status: int
    text: str
    location: str | None


class Browser:
    """Cookies (session, CSRF, causal token, messages) kept between requests, like a browser."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self.cookies = http.cookiejar.CookieJar()
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(self.cookies), _NoRedirect()
        )

    def request(self, path: str, data: dict[str, str] | None = None) -> Page:
        body = urllib.parse.urlencode(data).encode() if data is not None else None
        req = urllib.request.Request(self.base_url + path, data=body)
        try:
            with self.opener.open(req, timeout=30) as answer:
                return Page(answer.status, answer.read().decode(), answer.headers.get("Location"))
        except urllib.error.HTTPError as error:
            return Page(error.code, error.read().decode(errors="replace"),
                        error.headers.get("Location"))

    def csrf_token(self, path: str) -> str:
        page = self.request(path)
        assert page.status == 200, (path, page.status, page.text[:500])
        match = CSRF_FIELD_RE.search(page.text)
        assert match, f"no CSRF field on {path}"
        return match.group(1)

    def post_form(self, path: str, data: dict[str, str], *, form_page: str | None = None) -> Page:
        token = self.csrf_token(form_page or path)
        return self.request(path, {**data, "csrfmiddlewaretoken": token})


@pytest.fixture(scope="module")
def superuser() -> Iterator[tuple[str, str]]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    username, password = f"admin-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    user = User.objects.db_manager("default").create_superuser(username, "", password)
    # The login reads the user through the router, i.e. from a control replica.
    wait_until(lambda: User.objects.using("default_replica_1").filter(username=username).exists(),
               timeout=10, what="the control replica to have the user")
    yield username, password
    User.objects.using("default").filter(pk=user.pk).delete()


@pytest.fixture
def browser(service: ServiceProcess, superuser: tuple[str, str]) -> Browser:
    b = Browser(service.url)
    username, password = superuser
    answer = b.post_form("/admin/login/", {"username": username, "password": password,
                                           "next": "/admin/"})
    assert answer.status == 302, answer.text[:2000]
    assert answer.location == "/admin/"
    return b


@pytest.fixture(scope="module")
def site():
    from sites.service import create_site

    return create_site(f"admin-site-{uuid.uuid4().hex[:8]}", "Admin test site", shard="shard_1")


def test_the_admin_needs_a_login(service: ServiceProcess) -> None:
    answer = Browser(service.url).request("/admin/shards/tenant/")
    assert answer.status == 302
    assert answer.location.startswith("/admin/login/")


def test_a_superuser_loads_every_changelist_on_both_workers(browser: Browser, site) -> None:
    # Enough loads that both workers serve some: the session is shared, not a worker's.
    for _ in range(4):
        for path in ("/admin/", "/admin/sites/site/", "/admin/shards/tenant/",
                     "/admin/shards/shard/"):
            page = browser.request(path)
            assert page.status == 200, (path, page.status, page.text[:1000])
    sites = browser.request(f"/admin/sites/site/?q={site.entry.slug}").text
    assert site.entry.slug in sites and "shard_1" in sites
    assert site.api_key[:10] in sites  # the hint
    assert site.api_key not in sites
    tenants = browser.request(f"/admin/shards/tenant/?q={site.entry.slug}").text
    assert site.entry.slug in tenants


def test_the_shard_list_shows_topology_and_replica_lag(browser: Browser) -> None:
    page = browser.request("/admin/shards/shard/")
    assert page.status == 200
    for shard in ("shard_0", "shard_1"):
        assert re.search(rf"{shard}_replica_1: \d+\.\d{{3}} s", page.text), page.text[-3000:]
    assert "not in the topology file" not in page.text
    assert 'alt="True"' in page.text  # the healthy column's icon


def test_rotating_a_key_shows_the_new_key_once(browser: Browser, site) -> None:
    from sites.models import Site, hash_key

    before = Site.objects.using("default").get(pk=site.entry.id)
    answer = browser.post_form("/admin/sites/site/", {
        "action": "rotate_api_key", "_selected_action": str(site.entry.id), "index": "0",
    })
    assert answer.status == 302, answer.text[:2000]
    shown = browser.request("/admin/sites/site/")
    keys = re.findall(r"sk_[A-Za-z0-9_-]{43}", shown.text)
    assert len(keys) == 1, keys
    after = Site.objects.using("default").get(pk=site.entry.id)
    assert after.api_key_hash != before.api_key_hash
    assert after.api_key_hash == hash_key(keys[0]) != hash_key(site.api_key)
    # Shown once: the message is gone on the next page.
    assert not re.findall(r"sk_[A-Za-z0-9_-]{43}", browser.request("/admin/sites/site/").text)


def test_moving_a_tenant_by_hand_bumps_its_version(browser: Browser, service) -> None:
    from shards.directory import create_tenant
    from shards.models import Tenant

    entry = create_tenant(f"admin-move-{uuid.uuid4().hex[:8]}", shard="shard_0")
    path = f"/admin/shards/tenant/{entry.id}/change/"
    answer = browser.post_form(path, {"shard": "shard_1", "state": "active", "min_lsn": "0",
                                      "_save": "Save"})
    assert answer.status == 302, answer.text[:3000]
    row = Tenant.objects.using("default").get(id=entry.id)
    assert (row.shard, row.version) == ("shard_1", entry.version + 1)
    # Written through to the directory caches: every worker routes it to the new shard.
    wait_until(
        lambda: all(
            get(f"{service.url}/api/sites/{entry.slug}/_diag/where").body["shard"] == "shard_1"
            for _ in range(6)),
        timeout=10, what="the directory to route the tenant to shard_1",
    )
    # A shard that is not in the topology is refused by the form.
    refused = browser.post_form(path, {"shard": "shard_9", "state": "active", "min_lsn": "0",
                                       "_save": "Save"})
    assert refused.status == 200 and "Select a valid choice" in refused.text
    assert Tenant.objects.using("default").get(id=entry.id).shard == "shard_1"
