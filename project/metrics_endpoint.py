"""`/metrics`: who may scrape it, and the samples it serves (every worker's, merged).

The metrics themselves, their sampling and the request middleware are in `project.metrics`.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from project.errors import error
from project.metrics import queries_not_counted, sample
from project.metrics_moves import sample_moves

logger = logging.getLogger("shardsvc.metrics")


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def scrape_allowed(request: HttpRequest) -> bool:
    """A scrape with the right bearer token (METRICS_TOKEN), or without any token from an
    allowed network (METRICS_ALLOW). A wrong token is refused wherever it comes from: a
    misconfigured scraper should see it at once."""
    header = request.headers.get("Authorization", "")
    if header:
        scheme, _, token = header.partition(" ")
        expected = settings.METRICS_TOKEN
        return bool(
            expected
            and scheme.lower() == "bearer"
            and hmac.compare_digest(token.strip().encode(), expected.encode())
        )
    try:
        # REMOTE_ADDR: the peer of the socket, or the client a trusted proxy names
        # (project/proxy.py); a header from anyone else would let them claim 127.0.0.1.
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # an IPv4 client of a dual-stack listener
    return any(address in network for network in settings.METRICS_ALLOW)


def metrics_view(request: HttpRequest) -> HttpResponse:
    """Prometheus text format: every worker's samples merged (multiprocess mode), or this
    process's registry. Only for allowed networks or the metrics token."""
    if not scrape_allowed(request):
        return error(403, "forbidden",
                     "/metrics answers allowed networks (SHARDSVC_METRICS_ALLOW) or "
                     "'Authorization: Bearer <SHARDSVC_METRICS_TOKEN>'")
    try:
        sample()
    except Exception:
        logger.exception("metrics sampling failed")
    try:
        with queries_not_counted():
            sample_moves()
    except Exception:  # the control database down must not take the other metrics with it
        logger.exception("sampling the moves for metrics failed")
    path = multiprocess_dir()
    if path is not None:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry, path=path)
    else:
        registry = REGISTRY
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
