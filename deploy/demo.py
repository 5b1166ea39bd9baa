"""The demo site: an example page of "a customer's site" with the comments widget on it.

nginx serves it from `<topology folder>/demo` on its own port (base port + 28), so the page is
of another origin than the API (base port + 3), as a real customer's page would be. `demo`
(`python -m deploy.topology demo`, run by `bash deploy/setup.sh`) creates the site through the
ops API, allows the demo origins for its publishable key, signs a demo user through the site
API (with the secret key, as a site's backend does) and writes the page.
"""

from __future__ import annotations

import html
import json
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deploy.layout import LocalLayout
from deploy.processes import TopologyError

DEMO_SLUG = "demo"
# Within the 40 ports a test topology claims, clear of the others: the tests' extra services
# (base + 3 to + 9, + 22), the monitoring stack (+ 6 to + 9), the databases (+ 10 to + 19) and
# their exporters (each database's port + 20: + 30 to + 39).
DEMO_PORT_OFFSET = 28
DEMO_USER = ("demo-user", "Demo User")


def demo_port(layout: LocalLayout) -> int:
    return layout.base_port + DEMO_PORT_OFFSET


def demo_dir(layout: LocalLayout) -> Path:
    return layout.root / "demo"


def demo_origins(layout: LocalLayout) -> list[str]:
    """Origins the demo page is reachable at (Chromium resolves *.localhost by itself)."""
    port = demo_port(layout)
    return [f"http://localhost:{port}", f"http://demo.localhost:{port}"]


def widget_assets(static_root: Path) -> tuple[str, str]:
    """The widget's script and stylesheet under their hashed names (served immutable)."""
    manifest = static_root / "staticfiles.json"
    try:
        paths = json.loads(manifest.read_text())["paths"]
        return paths["shardsvc/widget.js"], paths["shardsvc/widget.css"]
    except (OSError, ValueError, KeyError) as exc:
        raise TopologyError(f"no widget in {manifest} ({exc}): run collectstatic "
                            "(`python -m deploy.topology up` does)") from None


def page_html(*, edge_url: str, static_root: Path, slug: str, public_key: str, title: str,
              user_token: str = "", user_id: str = "", page_url: str = "",
              live: bool = True) -> str:
    """A page with the widget: one <div data-...> and one <script> tag."""
    js, css = widget_assets(static_root)
    attrs = {
        "data-shardsvc-comments": "",
        "data-api": f"{edge_url}/api",
        "data-site": slug,
        "data-key": public_key,
        "data-css": f"{edge_url}/static/{css}",
        "data-user-token": user_token,
        "data-user-id": user_id,
        "data-page-url": page_url,
        "data-live": "" if live else "off",
    }
    div = " ".join(f'{name}="{html.escape(value)}"' for name, value in attrs.items() if value
                   or name == "data-shardsvc-comments")
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{html.escape(title)}</title>
</head>
<body>
<main>
<h1>{html.escape(title)}</h1>
<p>An example page of a site that embeds the comments widget.</p>
<div {div}></div>
</main>
<script src="{html.escape(edge_url)}/static/{html.escape(js)}" defer></script>
</body>
</html>
"""


def _call(method: str, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method=method,
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        raise TopologyError(f"{method} {url}: {exc.code} {exc.read()[:300]!r}") from None


def ensure_demo(layout: LocalLayout, *, edge_url: str, ops_token: str,
                static_root: Path) -> str:
    """Create (once) the demo site and (each time) its page; returns the page's address."""
    folder = demo_dir(layout)
    folder.mkdir(parents=True, exist_ok=True)
    saved = layout.root / "demo-site.json"  # the demo site's keys: outside what nginx serves
    if saved.exists():
        site = json.loads(saved.read_text())
    else:
        made = _call("POST", f"{edge_url}/api/ops/sites", {"slug": DEMO_SLUG, "name": "Demo"},
                     {"X-Ops-Token": ops_token})
        site = {"slug": made["slug"], "api_key": made["api_key"]}
    origins = _call("PUT", f"{edge_url}/api/ops/sites/{site['slug']}/origins",
                    {"origins": demo_origins(layout)}, {"X-Ops-Token": ops_token})
    site["public_key"] = origins["public_key"]
    saved.write_text(json.dumps(site))
    saved.chmod(0o600)
    user_id, name = DEMO_USER
    token = _call("POST", f"{edge_url}/api/sites/{site['slug']}/users/token",
                  {"user_id": user_id, "name": name}, {"X-Api-Key": site["api_key"]})["token"]
    (folder / "index.html").write_text(page_html(
        edge_url=edge_url, static_root=static_root, slug=site["slug"],
        public_key=site["public_key"], title="Demo post", user_token=token, user_id=user_id,
        page_url=f"{demo_origins(layout)[0]}/"))
    return f"{demo_origins(layout)[0]}/"
