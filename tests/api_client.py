"""A client for the comments API as a site's backend and its end users would use it."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

from deploy.topology import LocalTopology, ServiceProcess
from routers import causal
from tests.client import Connection, Response, request


@dataclass
class SiteClient:
    base: str  # http://host:port/api
    slug: str
    key: str
    shard: str
    user_token: str = ""
    # Like a browser's cookie: the latest causal token, sent back so we read our own writes.
    causal_token: str = ""
    # The publishable key, for calls as the site's web pages make them (with an Origin).
    public_key: str = ""

    @property
    def root(self) -> str:
        return f"{self.base}/sites/{self.slug}"

    def call(self, method: str, path: str, body: Any = None, *, user: bool = False,
             headers: dict[str, str] | None = None, key: str | None = None,
             via: Connection | None = None) -> Response:
        """One call; on `via`'s keep-alive connection when given, else on a new connection."""
        all_headers = {"X-Api-Key": self.key if key is None else key}
        if user and self.user_token:
            all_headers["X-User-Token"] = self.user_token
        if self.causal_token:
            all_headers[causal.HEADER] = self.causal_token
        all_headers.update(headers or {})
        send = request if via is None else via.request
        answer = send(method, f"{self.root}{path}", body=body, headers=all_headers)
        self.causal_token = answer.headers.get(causal.HEADER, self.causal_token)
        return answer

    def as_user(self, user_id: str, name: str = "") -> SiteClient:
        answer = self.call("POST", "/users/token", {"user_id": user_id, "name": name})
        assert answer.status == 200, answer.body
        return SiteClient(self.base, self.slug, self.key, self.shard, answer.body["token"],
                          self.causal_token, self.public_key)

    def thread(self, url: str | None = None) -> str:
        """The id (a string, as the API writes every id) of the page's thread."""
        answer = self.call("PUT", "/threads", {"url": url or f"https://x.test/{uuid.uuid4()}"})
        assert answer.status in (200, 201), answer.body
        return answer.body["id"]

    def comment(self, thread_id: str, body: str = "hello", parent_id: str | None = None) -> dict:
        payload: dict[str, Any] = {"body": body}
        if parent_id is not None:
            payload["parent_id"] = parent_id
        answer = self.call("POST", f"/threads/{thread_id}/comments", payload, user=True)
        assert answer.status == 201, answer.body
        return answer.body


# Throttle limits no test session reaches, for services whose tests are not about throttling
# (load from one address and one user would otherwise meet the production limits).
UNREACHED_THROTTLES = {
    "SHARDSVC_THROTTLE_AUTH_FAILURES": "100000/m",
    "SHARDSVC_THROTTLE_WRITES": "100000/m",
    "SHARDSVC_THROTTLE_ADMIN_LOGIN": "1000/m",
}


def create_site(service: ServiceProcess, topology: LocalTopology, *, prefix: str = "site",
                shard: str | None = None) -> SiteClient:
    slug = f"{prefix}-{uuid.uuid4().hex[:10]}"
    body: dict[str, Any] = {"slug": slug, "name": slug.title()}
    if shard:
        body["shard"] = shard
    answer = request("POST", f"{service.url}/api/ops/sites", body=body,
                     headers={"X-Ops-Token": topology.ops_token()})
    assert answer.status == 201, answer.body
    return SiteClient(f"{service.url}/api", slug, answer.body["api_key"], answer.body["shard"],
                      public_key=answer.body["public_key"])
