"""The one parser of a tenant out of a request (project/middleware.py `tenant_key`)."""

from __future__ import annotations

from django.test import RequestFactory, override_settings

from project.middleware import tenant_key


def test_the_path_names_the_tenant_before_the_header() -> None:
    requests = RequestFactory()
    assert tenant_key(requests.get("/api/sites/acme/threads/1")) == "acme"
    assert tenant_key(requests.get("/api/sites/acme/threads", HTTP_X_TENANT="other")) == "acme"
    assert tenant_key(requests.get("/api/ops/sites", HTTP_X_TENANT="other")) == "other"
    assert tenant_key(requests.get("/api/ops/sites")) is None


@override_settings(TENANT_SOURCES=["host"], TENANT_HOST_SUFFIX=".comments.example",
                   ALLOWED_HOSTS=["*"])
def test_the_host_names_the_tenant_when_configured() -> None:
    requests = RequestFactory()
    assert tenant_key(requests.get("/x", HTTP_HOST="acme.comments.example:8000")) == "acme"
    assert tenant_key(requests.get("/x", HTTP_HOST="comments.example")) is None
    assert tenant_key(requests.get("/api/sites/acme/x", HTTP_HOST="other.example")) is None


@override_settings(TENANT_PATH_PATTERN=r"^/s/(?P<tenant>[^/]+)/")
def test_the_path_pattern_is_read_from_settings() -> None:
    requests = RequestFactory()
    assert tenant_key(requests.get("/s/acme/threads")) == "acme"
    assert tenant_key(requests.get("/api/sites/acme/threads")) is None
