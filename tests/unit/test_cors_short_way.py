"""sites.cors.SiteCorsMiddleware answers what django-cors-headers' own middleware answers: the
short way it takes for calls without an Origin header changes no header of any answer."""

from __future__ import annotations

import pytest
from corsheaders.middleware import CorsMiddleware
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.test import RequestFactory

from sites.cors import SiteCorsMiddleware

CASES = [
    ("get", "/api/sites/acme/threads/1", {}),
    ("post", "/api/sites/acme/threads/1/comments", {}),
    ("get", "/api/ops/sites", {}),
    ("get", "/admin/", {}),
    # With an Origin (no site is current here, so none is allowed) and a preflight: the
    # library's own way.
    ("get", "/api/sites/acme/threads/1", {"HTTP_ORIGIN": "https://acme.example"}),
    ("options", "/api/sites/acme/threads/1",
     {"HTTP_ORIGIN": "https://acme.example", "HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET"}),
    ("options", "/api/sites/acme/threads/1", {"HTTP_ACCESS_CONTROL_REQUEST_METHOD": "GET"}),
    ("options", "/api/sites/acme/threads/1", {}),
]


def view(request: HttpRequest) -> HttpResponse:
    answer = JsonResponse({"ok": True})
    answer["Vary"] = "Accept"
    return answer


@pytest.mark.parametrize(("method", "path", "extra"), CASES)
def test_the_same_answer_as_the_librarys_middleware(method: str, path: str,
                                                    extra: dict[str, str]) -> None:
    def answer(middleware: type[CorsMiddleware]) -> tuple[int, dict[str, str]]:
        request = getattr(RequestFactory(), method)(path, **extra)
        response = middleware(view)(request)
        return response.status_code, dict(response.items())

    assert answer(SiteCorsMiddleware) == answer(CorsMiddleware)


def test_a_site_path_without_origin_still_varies_on_origin() -> None:
    request = RequestFactory().get("/api/sites/acme/threads/1")
    response = SiteCorsMiddleware(view)(request)
    assert response["Vary"] == "Accept, origin"
    assert "Access-Control-Allow-Origin" not in response
