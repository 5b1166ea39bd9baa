"""The JSON API served without session, CSRF, authentication and messages middleware, the admin
with them (project/wsgi.py), through the real service."""

from __future__ import annotations

import pytest

from deploy.topology import ServiceProcess
from tests.client import get, request

pytestmark = pytest.mark.usefixtures("django_db")


def test_the_api_runs_without_the_browser_middleware(service: ServiceProcess) -> None:
    api = get(f"{service.url}/api/_diag/middleware")
    assert api.status == 200
    assert api.body == {"session": False, "user": False, "messages": False}
    rest = get(f"{service.url}/_diag/middleware")
    assert rest.body == {"session": True, "user": True, "messages": True}


def test_the_admin_still_refuses_a_post_without_its_csrf_token(service: ServiceProcess) -> None:
    refused = request("POST", f"{service.url}/admin/login/",
                      data=b"username=a&password=b",
                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert refused.status == 403
    assert "CSRF" in str(refused.body)
    login_page = get(f"{service.url}/admin/login/")
    assert "csrftoken=" in login_page.headers.get("Set-Cookie", "")


def test_api_answers_set_no_cookie_of_djangos(service: ServiceProcess) -> None:
    answer = get(f"{service.url}/api/openapi.json", headers={"Cookie": "sessionid=x; csrftoken=y"})
    assert answer.status == 200
    assert "Set-Cookie" not in answer.headers
    assert "Cookie" not in answer.headers.get("Vary", "")
