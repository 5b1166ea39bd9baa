"""Debian's chromium driven by Playwright for Python: never a downloaded browser."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

CHROMIUM = "/usr/bin/chromium"


@contextmanager
def chromium() -> Iterator[Any]:
    """One headless browser (a few hundred MiB: share it per test module)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # --no-sandbox: the tests run as root, where Chromium's sandbox cannot start.
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox"])
        print(f"[browser] chromium {browser.version}")
        try:
            yield browser
        finally:
            browser.close()


@contextmanager
def logged_in_page(base_url: str, username: str, password: str, *,
                   next_path: str = "/admin/ops/") -> Iterator[Any]:
    """A page of a fresh browser, logged in to the admin as this staff user, on `next_path`."""
    from playwright.sync_api import expect

    with chromium() as browser:
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.goto(f"{base_url}/admin/login/?next={next_path}")
        page.fill("#id_username", username)
        page.fill("#id_password", password)
        page.click("input[type=submit]")
        expect(page.locator("#content")).to_be_visible()
        yield page
