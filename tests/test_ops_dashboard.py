"""The ops dashboard (/admin/ops/) in a real headless browser, through nginx, on the live
topology with Prometheus: the page shows the fleet and a firing alert, a chart has points, a
move started from its button (after the confirmation) completes, and a stopped move shows its
progress bar and phase and is aborted from its button. On this plain topology (no Patroni) the
switchover button is disabled with its reason, and its endpoint refuses a GET, a missing CSRF
token, an unknown or plain cluster and users without the permission (the switchover itself, on a
Patroni topology: tests/test_ops_dashboard_ha.py).

Debian's chromium is driven by Playwright (`executable_path`, never a downloaded browser); a
screenshot of the page is saved as the test's artefact and its path printed.
"""

from __future__ import annotations

import os
import re
import tempfile
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from deploy.topology import LocalTopology, ServiceProcess
from tests.browser import logged_in_page
from tests.client import wait_until
from tests.prometheus_api import firing, monitoring_started, query, wait_for

ARTEFACTS = Path(os.environ.get("SHARDSVC_TEST_ARTEFACTS",
                                Path(tempfile.gettempdir()) / "shardsvc-artefacts"))
pytestmark = pytest.mark.usefixtures("django_db")


@pytest.fixture(scope="module")
def prometheus(topology: LocalTopology, service: ServiceProcess) -> Iterator[str]:
    with monitoring_started(topology) as url:
        yield url


@pytest.fixture(scope="module")
def edge(topology: LocalTopology, service: ServiceProcess) -> Iterator[str]:
    """nginx in front of the service: it serves the dashboard's static files."""
    topology.ensure_edge()
    try:
        yield topology.edge_url
    finally:
        topology.stop_edge()


@pytest.fixture(scope="module")
def superuser() -> Iterator[tuple[str, str]]:
    from django.contrib.auth import get_user_model

    User = get_user_model()
    username, password = f"ops-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    user = User.objects.db_manager("default").create_superuser(username, "", password)
    # The login reads the user through the router, i.e. from a control replica.
    wait_until(lambda: User.objects.using("default_replica_1").filter(username=username).exists(),
               timeout=10, what="the control replica to have the user")
    yield username, password
    User.objects.using("default").filter(pk=user.pk).delete()


@pytest.fixture(scope="module")
def page(edge: str, superuser: tuple[str, str]) -> Iterator[Page]:
    # Playwright's sync API runs an event loop in this thread; Django's ORM refuses to run
    # beside one unless told it is safe (the tests call the ORM between page actions).
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        yield from _logged_in_page(edge, superuser)
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


def _logged_in_page(edge: str, superuser: tuple[str, str]) -> Iterator[Page]:
    with logged_in_page(edge, *superuser) as page:
        expect(page.locator("#ops")).to_be_visible()
        yield page


def test_the_dashboard_shows_the_fleet_charts_and_alerts(
        page: Page, prometheus: str, service: ServiceProcess, admin) -> None:
    for _ in range(10):  # queries on every cluster, for the charts' per-shard series
        urllib.request.urlopen(f"{service.url}/readyz/shards", timeout=10).close()
    wait_for(lambda: query(prometheus,
                           'cluster_role:shardsvc_db_queries:rate1m{cluster="shard_0"}'),
             timeout=60, what="the per-shard query rate recorded")
    slot = f"ops_leak_{uuid.uuid4().hex[:8]}"
    conn = admin("shard_1")
    conn.autocommit = True
    conn.execute("SELECT pg_create_logical_replication_slot(%s, 'pgoutput')", [slot])
    try:
        wait_for(lambda: firing(prometheus, "ReplicationSlotInactive", slot_name=slot),
                 timeout=60, what="the leaked slot's alert firing")
        page.reload()
        shards = page.locator("#ops-shards")
        for text in ("default", "shard_0", "shard_1", "shard_1_replica_1: replica"):
            expect(shards).to_contain_text(text)
        expect(page.locator("#ops-alerts")).to_contain_text(
            f"ReplicationSlotInactive: inactive replication slot {slot} on shard_1")
        chart = page.locator("svg#chart-rate")
        # Redrawn every 5 s: a line of two points or more once a series is a step (7 s) old.
        expect(chart).to_have_attribute("data-points", re.compile(r"^([2-9]|[1-9][0-9]+)$"),
                                        timeout=30_000)
        expect(chart.locator("polyline").first).to_be_attached()
        labels = page.locator("#legend-rate").inner_text()
        assert "shard_0 primary" in labels
        expect(page.locator("#ops-charts-error")).to_be_hidden()
    finally:
        conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "ops-dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000


def test_a_move_started_from_the_dashboard_completes(page: Page) -> None:
    from comments.service import get_or_create_thread, post_comment
    from shards.directory import create_tenant
    from shards.models import MoveJob, Tenant
    from shards.tenancy import tenant

    entry = create_tenant(f"ops-moved-{uuid.uuid4().hex[:8]}", shard="shard_0")
    with tenant(entry):
        thread, _ = get_or_create_thread("https://ops.example/1", "One")
        for n in range(5):
            post_comment(thread.id, author="u1", author_name="", body=f"c{n}", parent_id=None)
    page.reload()
    dialogs: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    page.select_option("#ops-start select[name=tenant]", str(entry.id))
    page.select_option("#ops-start select[name=target]", "shard_1")
    page.click("#ops-start input[type=submit]")
    expect(page.locator(".messagelist")).to_contain_text(f"Started moving {entry.slug} to shard_1")
    assert dialogs and "Start moving this tenant online?" in dialogs[0]
    finished = page.locator("#ops-recent tr", has_text=entry.slug)
    expect(finished).to_have_attribute("data-state", "done", timeout=120_000)
    row = Tenant.objects.using("default").get(pk=entry.id)
    assert row.shard == "shard_1"
    job = MoveJob.objects.using("default").get(tenant_id=entry.id)
    assert job.verified is True and "ops dashboard" in job.reason
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "ops-dashboard-after-move.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")


def test_a_stopped_move_shows_its_progress_and_is_aborted_from_the_dashboard(
        page: Page, topology: LocalTopology) -> None:
    from comments.service import get_or_create_thread, post_comment
    from shards.directory import create_tenant
    from shards.models import MoveJob, Tenant
    from shards.tenancy import tenant
    from tests.commands import manage

    entry = create_tenant(f"ops-stuck-{uuid.uuid4().hex[:8]}", shard="shard_0")
    with tenant(entry):
        thread, _ = get_or_create_thread("https://ops.example/2", "Two")
        for n in range(3):
            post_comment(thread.id, author="u1", author_name="", body=f"c{n}", parent_id=None)
    # A mover that died while catching up: its job and replication objects stay behind.
    crashed = manage(topology, "move_tenant", entry.slug, "shard_1", "--crash-at", "catching_up")
    assert crashed.returncode == 70, crashed.stdout + crashed.stderr[-2000:]
    job = MoveJob.objects.using("default").get(tenant_id=entry.id)

    page.reload()
    row = page.locator(f"#ops-moves .ops-move[data-job='{job.pk}']")
    expect(row).to_contain_text(f"{entry.slug} shard_0 → shard_1 catching up")
    bar = row.locator("progress")
    expect(bar).to_have_attribute("max", str(job.rows_total))
    expect(bar).to_have_attribute("value", str(job.rows_total))  # copied all, never more

    dialogs: list[str] = []

    def answer(dialog) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", answer)
    row.locator("input[type=submit][value=Abort]").click()
    expect(page.locator(".messagelist")).to_contain_text(f"aborting move {job.pk}")
    assert dialogs == [f"Abort the move of {entry.slug}? It stays on shard_0."]
    done = page.locator(f"#ops-recent tr[data-job='{job.pk}']")
    expect(done).to_have_attribute("data-state", "aborted", timeout=120_000)
    assert Tenant.objects.using("default").get(pk=entry.id).shard == "shard_0"
    expect(page.locator(f"#ops-moves .ops-move[data-job='{job.pk}']")).to_have_count(0)


def test_the_switchover_endpoint_refuses_what_it_cannot_run(page: Page, edge: str) -> None:
    from django.contrib.auth import get_user_model
    from django.test import Client

    page.reload()
    cell = page.locator("#ops-shards tr[data-cluster='shard_0'] .ops-switchover")
    expect(cell.locator("button[disabled]")).to_have_text("Switch over")
    expect(cell).to_contain_text("Not under Patroni")
    expect(page.locator("#ops-failovers-none")).to_be_visible()
    url = f"{edge}/admin/ops/switchover/"
    token = page.locator("#ops > input[name=csrfmiddlewaretoken]").input_value()

    assert page.request.get(url).status == 405
    no_token = page.request.post(url, form={"cluster": "shard_0"})
    assert no_token.status == 403 and "CSRF" in no_token.text()
    for cluster, status, code in (("shard_9", 400, "unknown_cluster"),
                                  ("shard_0", 409, "not_patroni")):
        answer = page.request.post(url, form={"cluster": cluster, "csrfmiddlewaretoken": token})
        assert (answer.status, answer.json()["error"]) == (status, code), answer.text()
    assert page.request.get(f"{edge}/admin/ops/patroni.json").json()["clusters"] == []

    # Staff without the "change tenant" permission: a 403 saying which; not staff: the login.
    User = get_user_model()
    password = uuid.uuid4().hex
    made = []
    for staff in (True, False):
        user = User.objects.db_manager("default").create_user(
            f"ops-{'staff' if staff else 'user'}-{uuid.uuid4().hex[:8]}", "", password,
            is_staff=staff)
        made.append(user.pk)
    wait_until(lambda: User.objects.using("default_replica_1").filter(pk__in=made).count() == 2,
               timeout=10, what="the control replica to have the users")
    try:
        browser = page.context.browser
        assert browser is not None
        for pk, expected in zip(made, (403, 302), strict=True):
            client = Client()
            client.force_login(User.objects.using("default").get(pk=pk))
            session = client.cookies["sessionid"].value
            wait_until(lambda s=session: _session_on_replica(s), timeout=10,
                       what="the control replica to have the session")
            context = browser.new_context()
            try:
                context.add_cookies([{"name": "sessionid", "value": session, "url": edge}])
                form_page = context.request.get(f"{edge}/admin/ops/")
                form_token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"',
                                       form_page.text())
                assert form_token, form_page.text()[:500]
                answer = context.request.post(url, max_redirects=0, form={
                    "cluster": "shard_0", "csrfmiddlewaretoken": form_token[1]})
                assert answer.status == expected, answer.text()[:500]
                if expected == 403:
                    assert "shards.change_tenant" in answer.json()["message"]
                else:
                    assert answer.headers["location"].startswith("/admin/login/")
            finally:
                context.close()
    finally:
        User.objects.using("default").filter(pk__in=made).delete()


def _session_on_replica(key: str) -> bool:
    """The control replica has the session as the primary has it now: a login saves the new
    session twice (empty, to claim its key, then with the user), and a replica that has only
    the first would serve the dashboard an anonymous session."""
    from django.contrib.sessions.models import Session

    def data(alias: str) -> str | None:
        row = Session.objects.using(alias).filter(session_key=key).first()
        return None if row is None else row.session_data

    return data("default_replica_1") == data("default") is not None
