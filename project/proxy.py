"""The client's address behind a reverse proxy.

nginx in front of the service connects from its own address and names the client in
`X-Real-IP` (overwriting whatever the client sent). That header is believed only when the
peer is a trusted proxy (settings.TRUSTED_PROXIES): then REMOTE_ADDR becomes the client's, so
per-address throttles, the /metrics allow-list and the access log all see the real client, and
the proxy's own address is kept in PROXY_ADDR_META. From anyone else the header is ignored.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence

from django.conf import settings
from django.http import HttpRequest, HttpResponse

CLIENT_HEADER = "HTTP_X_REAL_IP"
PROXY_ADDR_META = "SHARDSVC_PROXY_ADDR"


def _address(raw: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        address = ipaddress.ip_address(raw.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # an IPv4 peer of a dual-stack listener
    return address


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(meta: Mapping[str, str], trusted: Sequence[Network]) -> str | None:
    """The client a trusted proxy names, or None to keep the peer's own address."""
    peer = _address(meta.get("REMOTE_ADDR", ""))
    if peer is None or not any(peer in network for network in trusted):
        return None
    named = _address(meta.get(CLIENT_HEADER, ""))
    return str(named) if named is not None else None


class TrustedProxyMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.trusted = list(settings.TRUSTED_PROXIES)

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if self.trusted:
            client = client_address(request.META, self.trusted)
            if client is not None:
                request.META[PROXY_ADDR_META] = request.META["REMOTE_ADDR"]
                request.META["REMOTE_ADDR"] = client
        return self.get_response(request)
