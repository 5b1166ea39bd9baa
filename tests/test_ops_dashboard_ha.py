"""The ops dashboard on the highly available topology (control + one shard under Patroni, one
replica each, 3-member etcd; the service under Gunicorn behind nginx), in Debian's chromium
driven by Playwright: the shard map shows Patroni's members with their roles, a switchover
started from the button (after a confirmation naming cluster, leader and target) completes, a
second one is refused while it runs, a different member leads afterwards (asked of Patroni and
seen on the page), and the failover history on the page gains the entry. A screenshot is saved
as the test's artefact.

Nothing else runs here: this module's topology is its own, small, and torn down at its end.
"""

from __future__ import annotations

import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from deploy.topology import LocalTopology, ServiceProcess
from migrations_tools.patroni_status import HISTORY_SHOWN
from shards import patroni
from tests.browser import logged_in_page
from tests.ha_cluster import ha_service_topology, wait_for

pytestmark = pytest.mark.slow

CLUSTER = "shard_0"
ARTEFACTS = Path(os.environ.get("SHARDSVC_TEST_ARTEFACTS",
                                Path(tempfile.gettempdir()) / "shardsvc-artefacts"))


@pytest.fixture(scope="module")
def ha() -> Iterator[tuple[LocalTopology, ServiceProcess]]:
    with ha_service_topology("shardsvc-ha-ops-", shards=1) as (topo, service):
        topo.ensure_edge()  # nginx serves the admin's and the dashboard's static files
        yield topo, service


@pytest.fixture(scope="module")
def staff(ha: tuple[LocalTopology, ServiceProcess]) -> tuple[str, str]:
    topo, _ = ha
    username, password = f"ops-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    topo.manage("createsuperuser", "--noinput", "--username", username, "--email", "",
                DJANGO_SUPERUSER_PASSWORD=password)

    def everywhere() -> bool:
        # The login reads the user through the router: from a control member in recovery.
        for node in topo.layout.members("default"):
            with topo.admin_connect(node) as conn:
                if conn.execute("SELECT 1 FROM auth_user WHERE username = %s",
                                [username]).fetchone() is None:
                    return False
        return True

    wait_for(everywhere, 30, "every control member to have the user")
    return username, password


@pytest.fixture(scope="module")
def page(ha: tuple[LocalTopology, ServiceProcess], staff: tuple[str, str]) -> Iterator[Page]:
    topo, _ = ha
    # Playwright's sync API runs an event loop in this thread; the harness closes Django's
    # connections after each test, which Django refuses beside a loop unless told it is safe.
    saved = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with logged_in_page(topo.edge_url, *staff) as logged_in:
            expect(logged_in.locator("#ops")).to_be_visible()
            yield logged_in
    finally:
        if saved is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = saved


def test_a_switchover_started_from_the_dashboard_completes_and_enters_the_history(
        ha: tuple[LocalTopology, ServiceProcess], staff: tuple[str, str], page: Page) -> None:
    topo, _ = ha
    topo.wait_cluster_streaming(CLUSTER, timeout=60)
    old = topo.leader(CLUSTER)
    target = next(n for n in topo.layout.members(CLUSTER) if n != old)
    entries_before = len(patroni.history(topo.member_urls(CLUSTER)))

    page.reload()
    row = page.locator(f"#ops-shards tr[data-cluster='{CLUSTER}']")
    expect(row.locator(f"li[data-member='{old.alias}']")).to_have_attribute("data-role",
                                                                            "leader")
    expect(row.locator(f"li[data-member='{target.alias}']")).to_have_attribute(
        "data-role", re.compile(r"^(sync_standby|replica)$"))
    expect(row.locator(f"li[data-member='{old.alias}']")).to_contain_text(
        f"{old.alias}: leader, running, timeline")
    # Every Patroni cluster has the button; the control cluster's stays untouched here.
    expect(page.locator("#ops-shards tr[data-cluster='default'] form.ops-switchover-form")) \
        .to_have_count(1)
    form = row.locator("form.ops-switchover-form")
    expect(form.locator("select[name=to] option")).to_have_text(["Patroni picks", target.alias])

    dialogs: list[str] = []

    def accept(dialog) -> None:  # type: ignore[no-untyped-def]
        dialogs.append(dialog.message)
        dialog.accept()

    page.once("dialog", accept)
    form.locator("select[name=to]").select_option(target.alias)
    form.locator("input[type=submit]").click()
    notice = row.locator(".ops-switchover-notice")
    expect(notice).to_contain_text(
        f"Started the switchover of {CLUSTER} from {old.alias} to {target.alias} (pid ")
    assert dialogs == [f"Switch over {CLUSTER}? Its leader {old.alias} hands over to "
                       f"{target.alias}; writes pause for a few seconds."]

    # A second request while the command runs (it lasts seconds: Patroni's handover alone
    # takes more than one of its loops) is refused, as the CLI's would not be.
    token = page.locator("#ops > input[name=csrfmiddlewaretoken]").input_value()
    again = page.request.post(f"{topo.edge_url}/admin/ops/switchover/",
                              form={"cluster": CLUSTER, "csrfmiddlewaretoken": token})
    assert (again.status, again.json()["error"]) == (409, "switchover_running"), again.text()

    status = row.locator(".ops-switchover-status")
    expect(status).to_have_attribute("data-state", "done", timeout=120_000)
    expect(status).to_contain_text(
        f"{CLUSTER}: {old.alias} -> {target.alias}; writes through PgBouncer paused")
    expect(status).to_contain_text(f"by ops dashboard: {staff[0]}")
    print(f"\n{status.inner_text()}")  # the pause measured: the benchmark's business
    assert topo.leader(CLUSTER) == target  # Patroni's own answer
    expect(row.locator(f"li[data-member='{target.alias}']")).to_have_attribute(
        "data-role", "leader", timeout=30_000)

    history = page.locator(f"#ops-failovers tr[data-cluster='{CLUSTER}']")
    expect(history).to_have_count(min(entries_before + 1, HISTORY_SHOWN), timeout=30_000)
    newest = history.first
    expect(newest).to_contain_text(f"{old.alias} → {target.alias}")
    expect(newest).to_contain_text(f"switchover from the ops dashboard: {staff[0]}")
    assert len(patroni.history(topo.member_urls(CLUSTER))) == entries_before + 1

    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTEFACTS / "ops-dashboard-switchover.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}")
    assert shot.stat().st_size > 10_000
    topo.wait_cluster_streaming(CLUSTER, timeout=90)


def test_a_refused_switchover_says_why_on_the_page(
        ha: tuple[LocalTopology, ServiceProcess], page: Page) -> None:
    topo, _ = ha
    leader = topo.leader(CLUSTER)
    page.reload()
    row = page.locator(f"#ops-shards tr[data-cluster='{CLUSTER}']")
    expect(row.locator(f"li[data-member='{leader.alias}']")).to_have_attribute("data-role",
                                                                               "leader")
    # A member that is not (or no longer) a candidate: the leader itself, posted as a stale
    # page would post it. The answer is a 409 with the reason, shown beside the button.
    form = row.locator("form.ops-switchover-form")
    form.locator("select[name=to]").evaluate(
        "(s, name) => s.append(new Option(name, name))", leader.alias)
    form.locator("select[name=to]").select_option(leader.alias)
    page.once("dialog", lambda dialog: dialog.accept())
    form.locator("input[type=submit]").click()
    expect(row.locator(".ops-switchover-notice")).to_have_text(
        f"Not started: {leader.alias} already leads {CLUSTER}; choose among: "
        + ", ".join(n.alias for n in topo.layout.members(CLUSTER) if n != leader))
    assert topo.leader(CLUSTER) == leader
