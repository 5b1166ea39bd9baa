"""Content-Security-Policy on HTML pages (the admin, the API docs).

Django 5.2 has no CSP of its own. JSON answers need none (a browser never renders them as a
page), so only HTML gets the header. The policy is CONTENT_SECURITY_POLICY, or the one of the
longest matching prefix in CONTENT_SECURITY_POLICY_BY_PATH; a view that set its own keeps it.
"""

from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse

HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.default: str = settings.CONTENT_SECURITY_POLICY
        # Longest prefix first, so a more specific path wins.
        self.by_path: list[tuple[str, str]] = sorted(
            settings.CONTENT_SECURITY_POLICY_BY_PATH.items(), key=lambda item: -len(item[0])
        )

    def policy_for(self, path: str) -> str:
        for prefix, policy in self.by_path:
            if path.startswith(prefix):
                return policy
        return self.default

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        content_type = response.get("Content-Type", "")
        if content_type.startswith("text/html") and HEADER not in response:
            response[HEADER] = self.policy_for(request.path_info)
        return response
