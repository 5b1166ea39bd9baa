"""The comments widget in a real browser (Debian's chromium through Playwright): a page of
another origin, served by the edge's demo server, embeds it with one <script> and one <div>;
users post, reply, vote, edit and delete; a second browser sees it live; an origin the site did
not allow is refused; comment bodies stay text. One browser for the module."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from deploy.demo import demo_dir, demo_port, ensure_demo, page_html
from deploy.topology import LocalTopology
from tests.api_client import SiteClient, create_site
from tests.browser import chromium
from tests.client import request

# ms: how long a change may take to show on the other open page before the test calls it not
# delivered. The widget never polls, so whatever shows did come live. How fast it comes (the
# 2 s bound) is bench_live's to measure: a test run on a busy machine is no timing.
LIVE = 10_000
HOSTILE = '<b>bold</b><script>window.__owned = 1</script><img src=x onerror="window.__owned = 2">'


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    # Playwright's sync API keeps an event loop in this thread: the harness's Django teardown
    # (closing connections after each test) must still be allowed meanwhile. Only meanwhile:
    # processes started later (manage.py check --deploy) must not inherit it.
    before = os.environ.get("DJANGO_ALLOW_ASYNC_UNSAFE")
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with chromium() as launched:
            yield launched
    finally:
        if before is None:
            os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)
        else:
            os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = before


@pytest.fixture(scope="module")
def widget_site(service, topology: LocalTopology) -> SiteClient:
    topology.ensure_edge()  # nginx: the API, the widget's static files and the demo server
    site = create_site(service, topology, prefix="widget")
    origin = f"http://demo.localhost:{demo_port(topology.layout)}"
    answer = request("PUT", f"{service.url}/api/ops/sites/{site.slug}/origins",
                     body={"origins": [origin]}, headers={"X-Ops-Token": topology.ops_token()})
    assert answer.status == 200, answer.body
    return site


def write_page(topology: LocalTopology, site: SiteClient, *, user: str = "",
               host: str = "demo.localhost", page: str = "") -> str:
    """A page on the demo server (for `user`, signed by the site's backend); its address."""
    token = site.as_user(user, user.title()).user_token if user else ""
    name = f"page-{uuid.uuid4().hex[:8]}.html"
    (demo_dir(topology.layout) / name).write_text(page_html(
        edge_url=topology.edge_url, static_root=topology.static_root, slug=site.slug,
        public_key=site.public_key, title="A post", user_token=token, user_id=user,
        page_url=page or f"http://demo.localhost:{demo_port(topology.layout)}/posts/{name}"))
    return f"http://{host}:{demo_port(topology.layout)}/{name}"


def open_widget(browser, url: str):
    context = browser.new_context()
    page = context.new_page()
    page.goto(url)
    widget = page.locator("[data-shardsvc-comments]")
    expect(widget.get_by_role("heading", name=re.compile(r"^Comments \(\d+\)$"))).to_be_visible()
    return page, widget


def screenshot(page, tmp_path: Path) -> Path:
    """The page as the user sees it at the end of the test, kept as the test's artefact."""
    shot = tmp_path / "widget.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"[artefact] screenshot: {shot}")
    assert shot.stat().st_size > 0
    return shot


def comment(widget, body: str):
    """The comment whose own body (not a reply's) holds `body`."""
    return widget.locator(".shardsvc-comment").filter(
        has=widget.page.locator(":scope > article > .shardsvc-body", has_text=body)).first


def own(comment_item):
    """The comment itself, without its replies (which have buttons of their own)."""
    return comment_item.locator(":scope > article")


def test_post_reply_vote_edit_delete_live_on_another_page(widget_site, topology, browser,
                                                          tmp_path: Path) -> None:
    post_url = f"http://demo.localhost:{demo_port(topology.layout)}/posts/{uuid.uuid4().hex}"
    ann_page, ann = open_widget(browser, write_page(topology, widget_site, user="ann",
                                                    page=post_url))
    bob_page, bob = open_widget(browser, write_page(topology, widget_site, user="bob",
                                                    page=post_url))
    for widget in (ann, bob):
        expect(widget).to_have_attribute("data-live-state", "open")

    # Ann posts, with the keyboard: the field is found by its label, the button by Tab.
    ann.get_by_label("Add a comment").fill("First from Ann")
    ann.get_by_label("Add a comment").press("Tab")
    ann_page.keyboard.press("Enter")
    expect(comment(ann, "First from Ann")).to_be_visible()
    expect(comment(bob, "First from Ann")).to_be_visible(timeout=LIVE)

    # Bob replies to it; the reply nests under it on both pages.
    own(comment(bob, "First from Ann")).get_by_role("button", name="Reply").click()
    bob.get_by_label("Your reply").fill("Bob's reply")
    bob.get_by_role("button", name="Post reply").click()
    nested = ".shardsvc-replies .shardsvc-body"
    expect(comment(bob, "First from Ann").locator(nested)).to_have_text("Bob's reply")
    expect(comment(ann, "First from Ann").locator(nested)).to_have_text("Bob's reply",
                                                                         timeout=LIVE)

    # Ann upvotes the reply: her button is pressed, the score reaches Bob's page.
    reply = own(comment(ann, "Bob's reply"))
    reply.get_by_role("button", name="Upvote").click()
    expect(reply.get_by_role("button", name="Upvote")).to_have_attribute("aria-pressed", "true")
    expect(own(comment(bob, "Bob's reply")).locator(".shardsvc-score")).to_have_text(
        "1", timeout=LIVE)

    # Ann edits, then deletes her comment; Bob sees both.
    own(comment(ann, "First from Ann")).get_by_role("button", name="Edit").click()
    ann.get_by_label("Edit your comment").fill("First from Ann (edited)")
    ann.get_by_role("button", name="Save").click()
    expect(comment(bob, "First from Ann (edited)")).to_be_visible(timeout=LIVE)
    # Only the author gets Edit and Delete.
    theirs = own(comment(bob, "First from Ann (edited)"))
    expect(theirs.get_by_role("button", name="Edit")).to_have_count(0)
    own(comment(ann, "First from Ann (edited)")).get_by_role("button", name="Delete").click()
    expect(ann.locator(".shardsvc-body.shardsvc-deleted")).to_have_text("[deleted]")
    expect(bob.locator(".shardsvc-body.shardsvc-deleted")).to_have_text("[deleted]",
                                                                         timeout=LIVE)
    expect(bob.get_by_role("heading", name="Comments (1)")).to_be_visible(timeout=LIVE)

    # Ids survive the round trip: what the page holds is what the API and the database hold.
    thread = ann.get_attribute("data-thread-id")
    listed = widget_site.call("GET", f"/threads/{thread}/comments").body["items"]
    reply_id = listed[0]["replies"][0]["id"]
    assert int(reply_id) > 2**53
    assert bob.locator(f'[data-comment-id="{reply_id}"]').count() == 1
    assert listed[0]["replies"][0]["score"] == 1

    screenshot(ann_page, tmp_path)
    ann_page.context.close()
    bob_page.context.close()


def test_bodies_stay_text(widget_site, topology, browser, tmp_path: Path) -> None:
    page, widget = open_widget(browser, write_page(topology, widget_site, user="mallory"))
    widget.get_by_label("Add a comment").fill(HOSTILE)
    widget.get_by_role("button", name="Post comment").click()
    body = widget.locator(".shardsvc-body").first
    expect(body).to_have_text(HOSTILE)
    assert body.locator("b, script, img").count() == 0
    assert page.evaluate("window.__owned") is None
    # And after a reload (the body read back from the API), still text.
    page.reload()
    expect(page.locator(".shardsvc-body").first).to_have_text(HOSTILE)
    assert page.evaluate("window.__owned") is None
    screenshot(page, tmp_path)
    page.context.close()


def test_a_page_of_an_origin_not_allowed_is_refused(widget_site, topology, browser,
                                                    tmp_path: Path) -> None:
    context = browser.new_context()
    page = context.new_page()
    answers: list[int] = []
    page.on("response", lambda r: answers.append(r.status) if "/api/" in r.url else None)
    page.goto(write_page(topology, widget_site, user="eve", host="other.localhost"))
    widget = page.locator("[data-shardsvc-comments]")
    expect(widget.get_by_role("alert")).to_have_text("Could not reach the comments service.")
    expect(widget.locator(".shardsvc-comment")).to_have_count(0)
    # The browser got no CORS answer, so the page read nothing; the API itself said 403.
    assert 200 not in answers and 201 not in answers
    screenshot(page, tmp_path)
    context.close()


def test_throttled_and_unavailable_answers_are_explained(widget_site, topology, browser,
                                                         tmp_path: Path) -> None:
    page, widget = open_widget(browser, write_page(topology, widget_site, user="tim"))
    origin = f"http://demo.localhost:{demo_port(topology.layout)}"
    cors = {"Access-Control-Allow-Origin": origin,
            "Access-Control-Expose-Headers": "Retry-After", "Content-Type": "application/json"}
    page.route(re.compile(r"/threads/[0-9]+/comments$"), lambda route: route.fulfill(
        status=429, headers={**cors, "Retry-After": "7"},
        body='{"error": "throttled", "message": "too many writes"}')
        if route.request.method == "POST" else route.continue_())
    widget.get_by_label("Add a comment").fill("one too many")
    widget.get_by_role("button", name="Post comment").click()
    expect(widget.get_by_role("alert")).to_contain_text("Too many requests: please wait 7 seconds")
    page.unroute(re.compile(r"/threads/[0-9]+/comments$"))
    page.route(re.compile(r"/threads/[0-9]+/comments\?"), lambda route: route.fulfill(
        status=503, headers={**cors, "Retry-After": "1"},
        body='{"error": "shard_unavailable", "message": "down"}'))
    widget.get_by_label("Sort by").select_option("oldest")
    expect(widget.get_by_role("alert")).to_contain_text("briefly unavailable")
    screenshot(page, tmp_path)
    page.context.close()


def test_the_demo_page_shows_the_widget_signed_in(widget_site, topology, browser,
                                                  tmp_path: Path) -> None:
    url = ensure_demo(topology.layout, edge_url=topology.edge_url,
                      ops_token=topology.ops_token(), static_root=topology.static_root)
    assert url == f"http://localhost:{demo_port(topology.layout)}/"
    page = browser.new_context().new_page()
    page.goto(url)
    widget = page.locator("[data-shardsvc-comments]")
    # At once, as a quick user would: posting waits until the page's thread is known.
    widget.get_by_label("Add a comment").fill("Hello from the demo")
    widget.get_by_role("button", name="Post comment").click()
    expect(comment(widget, "Hello from the demo")).to_be_visible()
    expect(widget.locator(".shardsvc-error")).to_be_empty()
    # The script came from the edge under its hashed name, cacheable for good.
    script = page.locator("script[src*='/static/shardsvc/widget.']").get_attribute("src")
    answer = request("GET", script)
    assert answer.status == 200
    assert "immutable" in answer.headers.get("Cache-Control", "")
    screenshot(page, tmp_path)
    page.context.close()


def test_load_more_and_order(widget_site, topology, browser, tmp_path: Path) -> None:
    post_url = f"http://demo.localhost:{demo_port(topology.layout)}/posts/{uuid.uuid4().hex}"
    writer = widget_site.as_user("writer", "Writer")
    thread = writer.thread(post_url)
    for i in range(25):
        writer.comment(thread, f"number {i:02d}")
    page, widget = open_widget(browser, write_page(topology, widget_site, page=post_url))
    bodies = widget.locator(".shardsvc-list > .shardsvc-comment .shardsvc-body")
    expect(bodies).to_have_count(20)
    expect(bodies.first).to_have_text("number 24")
    expect(widget.get_by_text("Sign in to comment.")).to_be_visible()  # no user: read-only
    widget.get_by_role("button", name="Load more comments").click()
    expect(bodies).to_have_count(25)
    expect(bodies.last).to_have_text("number 00")
    expect(widget.get_by_role("button", name="Load more comments")).to_be_hidden()
    widget.get_by_label("Sort by").select_option("oldest")
    expect(bodies.first).to_have_text("number 00")
    expect(bodies).to_have_count(20)
    screenshot(page, tmp_path)
    page.context.close()
