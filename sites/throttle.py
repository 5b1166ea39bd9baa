"""Throttles: failed credential checks per client address, writes per end user, admin logins.

They live in sites, the lowest application: sites owns the API keys whose failed checks are
counted, comments (built on sites) counts its writes here, and the project shell above both
throttles admin logins.

Counts live in the shared cache (Redis, through Django's cache and django-ratelimit), so every
worker and every host sees one count per address or user. django-ratelimit counts in fixed
windows with an atomic `INCR`; a window of one rate ends at a moment of its own per counted
value, and `Retry-After` says when.

Failed checks are counted, successes are not: a site's normal traffic never comes near the
limits, while a client guessing keys or tokens is refused (429) before its next guess is
looked up, so a flood of never-seen keys stops reaching the control database. An address that
reaches the limit is pushed to every worker (sites.blocked), so checking one reads nothing
from Redis while the worker's view of the blocked addresses is live.

Fail open: when the cache cannot be read or written, nothing is throttled (a warning is
logged, at most every few seconds per worker). A Redis outage must not lock every site out;
while it lasts, the limits are off and wrong keys are bounded by the key lookup's own caches.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any

from django.conf import settings
from django.core.cache import caches
from django.http import HttpRequest, HttpResponse
from django_ratelimit import core as ratelimit_core
from django_ratelimit.core import get_usage
from django_redis.cache import RedisCache

from project.errors import error
from shards import redisguard
from sites.blocked import BlockedAddresses, announce

logger = logging.getLogger("shardsvc.throttle")

AUTH_FAILURES = "auth-failures"
WRITES = "writes"
ADMIN_LOGIN_ADDRESS = "admin-login-address"
ADMIN_LOGIN_USER = "admin-login-user"
_CHECKED = "_shardsvc_auth_checked"  # request attribute: this request's address was checked
_DEFERRED = "_shardsvc_auth_deferred"  # request attribute: its check waits for a Redis read
_WARN_EVERY = 10.0
_last_warning = 0.0

Key = str | Callable[[str, HttpRequest], str]


class Throttled(Exception):
    """Too many attempts: answered 429 with Retry-After."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(1, int(retry_after))


def _usage(request: HttpRequest, group: str, key: Key, rate: str | None, *,
           increment: bool) -> dict[str, Any] | None:
    """The counter's state (and one more, with `increment`), or None: limit off or cache down."""
    if rate is None:
        return None
    try:
        return get_usage(request, group=group, key=key, rate=rate, increment=increment)
    except Exception as exc:  # fail open: see the module docstring
        _warn_unavailable(exc)
        return None


def _warn_unavailable(exc: Exception) -> None:
    global _last_warning
    now = time.monotonic()
    if now - _last_warning >= _WARN_EVERY:
        _last_warning = now
        logger.warning("throttle counters unavailable, not throttling: %s", exc)


def _counter(group: str, value: str, rate: str) -> tuple[str, int, int, int]:
    """(django-ratelimit's cache key for `value`'s counter in `group`, the limit, the end of
    the current window, the period). The same key get_usage counts under, so the counters
    read or counted here and there are one."""
    limit, period = _split_rate(rate)
    window = ratelimit_core._get_window(value, period)
    return _cache_key(group, window, rate, value), limit, window, period


# Remembered: the failed-check counter is read on every request that carries a credential, for
# a few addresses at a time, and its key changes only when a window ends.
_split_rate = functools.lru_cache(maxsize=64)(ratelimit_core._split_rate)


@functools.lru_cache(maxsize=4096)
def _cache_key(group: str, window: int, rate: str, value: str) -> str:
    return str(ratelimit_core._make_cache_key(group, window, rate, value, ratelimit_core.ALL))


@dataclass(frozen=True)
class _Peer:
    """What django-ratelimit's _get_ip reads of a request."""

    META: dict[str, str]


@functools.lru_cache(maxsize=4096)
def _masked(address: str, ipv4_mask: int, ipv6_mask: int) -> str:
    # The masks are part of the key only so that a change of settings is never answered from
    # here; _get_ip reads them itself.
    return str(ratelimit_core._get_ip(_Peer({"REMOTE_ADDR": address})))


def _client_address(request: HttpRequest) -> str:
    """django-ratelimit's address of the client (IPv6 per /64 by default), as its "ip" key
    counts it."""
    address = request.META.get("REMOTE_ADDR")
    if not address or getattr(settings, "RATELIMIT_IP_META_KEY", None):
        return str(ratelimit_core._get_ip(request))  # its own errors, or its own source
    return _masked(address, getattr(settings, "RATELIMIT_IPV4_MASK", 32),
                   getattr(settings, "RATELIMIT_IPV6_MASK", 64))


def _ratelimit_cache() -> Any:
    return caches[getattr(settings, "RATELIMIT_USE_CACHE", "default")]


def _enabled() -> bool:
    return bool(getattr(settings, "RATELIMIT_ENABLE", True))


def _peek_by_address(request: HttpRequest, group: str, rate: str | None) -> dict[str, Any] | None:
    """The state of a per-address counter, read with one cache GET.

    get_usage(increment=False) sends two commands (an ADD that plants a 0 for the address,
    then a GET), and the failed-check counter is read on every authenticated request. This
    reads the same counter (django-ratelimit's own key, window and address masking) with one;
    an address that never failed has no key at all. A cache failure reads as no count (the
    cache ignores its errors): fail open, as everywhere here.
    """
    if rate is None or not _enabled():
        return None
    key, limit, window, _ = _counter(group, _client_address(request), rate)
    count = _ratelimit_cache().get(key) or 0
    return {"count": count, "limit": limit, "should_limit": count > limit,
            "time_left": window - int(time.time())}


# One round trip for a count: the increment, and the expiry when it starts the window.
_COUNT_IN_WINDOW = """
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[1]) end
return count
"""


def _count(group: str, value: str, rate: str | None) -> dict[str, Any] | None:
    """Count one for `value` in `group` with one Redis call; the counter's state after it, or
    None (limit off, or Redis unavailable: fail open).

    get_usage(increment=True) sends an ADD and, once the counter exists, an EVAL of
    django-redis's increment: two round trips on every write. Same key, same count, one."""
    if rate is None or not _enabled():
        return None
    key, limit, window, period = _counter(group, value, rate)
    cache = _ratelimit_cache()
    try:
        count = int(redisguard.client().eval(
            _COUNT_IN_WINDOW, 1, cache.make_key(key),
            period + ratelimit_core.EXPIRATION_FUDGE))
    except Exception as exc:  # fail open: see the module docstring
        _warn_unavailable(exc)
        return None
    return {"count": count, "limit": limit, "should_limit": count > limit,
            "time_left": window - int(time.time())}


def _full(usage: dict[str, Any] | None) -> bool:
    return usage is not None and usage["count"] >= usage["limit"]


# ----- blocked addresses, pushed to every worker (sites.blocked) -------------------------------

_BLOCKED = "throttle:blocked"
_views: dict[str, BlockedAddresses] = {}


def _blocked_view() -> BlockedAddresses | None:
    """This process's view of the blocked addresses, or None where the counters do not live in
    the default cache's Redis."""
    if getattr(settings, "RATELIMIT_USE_CACHE", "default") != "default":
        return None
    cache = _ratelimit_cache()
    if not isinstance(cache, RedisCache):
        return None  # e.g. a test's in-memory cache: nothing to subscribe to
    key = cache.make_key(_BLOCKED)
    view = _views.get(key)
    if view is None or view.pid != os.getpid():
        view = _views[key] = BlockedAddresses(redisguard.client, key,
                                              can_connect=redisguard.available)
    return view


def _settled_by_pushed_view(request: HttpRequest, rate: str) -> bool:
    """Settle this address's check from the pushed view (no I/O to wait on); False when the
    view cannot be trusted now and the counter must be read."""
    view = _blocked_view()
    until = view.check(_client_address(request)) if view is not None else None
    if until is None:
        return False
    limit, _ = _split_rate(rate)
    usage = {"count": limit, "limit": limit, "time_left": int(until - time.time())}
    _settle(request, rate, usage if until else None)
    return True


def refuse_failing_client(request: HttpRequest) -> None:
    """Raise Throttled if this client address has failed too many credential checks.

    Call it before looking a credential up: a refused guess costs no lookup at all.
    """
    if getattr(request, _CHECKED, False):
        return  # one request may carry several credentials (key, then user token)
    rate = settings.THROTTLE_AUTH_FAILURES
    if rate is not None and _enabled() and _settled_by_pushed_view(request, rate):
        return
    _settle(request, rate, _peek_by_address(request, AUTH_FAILURES, rate))


def _settle(request: HttpRequest, rate: str | None, usage: dict[str, Any] | None) -> None:
    setattr(request, _CHECKED, True)
    setattr(request, _DEFERRED, False)
    if _full(usage):
        assert usage is not None
        raise Throttled(
            f"too many failed credential checks from this address (limit {rate}); "
            f"retry after {max(1, usage['time_left'])} s",
            usage["time_left"],
        )


# ----- the check made with the request's own Redis read ---------------------------------------
#
# A request with a credential whose address's verdict the pushed view (sites.blocked) cannot
# give reads its counter: one Redis round trip, the only one of a cached comment page besides
# the page itself. The check comes before the credential's lookup so that a guess costs no
# lookup. A request that only reads and whose credential this worker already holds as valid
# puts no lookup at stake, so its check may wait: a comment page (comments.auth chooses which
# views) reads the counter in the same MGET as the page (deferred_read), and an answer given
# without that read is held until the check is made (settle_deferred, which the API runs on
# every answer). Either way a blocked address gets 429 and nothing else, whatever its
# credential.


def defer_failing_client_check(request: HttpRequest) -> None:
    """Check this address later, with the request's first Redis read or before its answer
    leaves. Only for a read-only request whose credential needs no lookup."""
    if getattr(request, _CHECKED, False):
        return
    if request.method not in ("GET", "HEAD"):
        # A write must be refused before it happens, not after.
        refuse_failing_client(request)
        return
    rate = settings.THROTTLE_AUTH_FAILURES
    if rate is None or not _enabled():
        refuse_failing_client(request)  # nothing to read: settled now
        return
    if _settled_by_pushed_view(request, rate):
        return
    setattr(request, _DEFERRED, True)


@dataclass(frozen=True)
class DeferredRead:
    """The counter to read in a caller's own Redis round trip, and what settles the check."""

    key: str  # as stored in Redis (the cache's prefix and version applied)
    request: HttpRequest

    def settle(self, raw: bytes | str | None, *, unavailable: bool = False) -> None:
        """The counter's raw value as the caller's read returned it (None: no failures), or
        `unavailable`: the read failed, and the check fails open as a failed GET does (it is
        not tried again: a Redis that just timed out is not waited on twice)."""
        rate = settings.THROTTLE_AUTH_FAILURES
        usage = None
        if not unavailable and rate is not None and _enabled():
            _, limit, window, _ = _counter(AUTH_FAILURES, _client_address(self.request), rate)
            count = int(raw) if raw is not None else 0
            usage = {"count": count, "limit": limit, "time_left": window - int(time.time())}
        _settle(self.request, rate, usage)


def deferred_read(request: HttpRequest) -> DeferredRead | None:
    """The deferred check of this request as a key to read, or None when nothing waits."""
    if not getattr(request, _DEFERRED, False) or getattr(request, _CHECKED, False):
        return None
    rate = settings.THROTTLE_AUTH_FAILURES
    if (rate is None or not _enabled()
            or getattr(settings, "RATELIMIT_USE_CACHE", "default") != "default"):
        # Off (no I/O), or the counters live elsewhere than the caller's Redis: check now.
        refuse_failing_client(request)
        return None
    key, _, _, _ = _counter(AUTH_FAILURES, _client_address(request), rate)
    return DeferredRead(_ratelimit_cache().make_key(key), request)


def settle_deferred(request: HttpRequest) -> None:
    """Make a check still waiting (the request read nothing from Redis): raise Throttled if
    this address failed too often."""
    if getattr(request, _DEFERRED, False) and not getattr(request, _CHECKED, False):
        refuse_failing_client(request)


def count_failed_check(request: HttpRequest) -> None:
    """Count a wrong API key, user token or ops token sent from this client address; the
    failure that reaches the limit blocks the address in every worker (sites.blocked)."""
    rate = settings.THROTTLE_AUTH_FAILURES
    usage = _usage(request, AUTH_FAILURES, "ip", rate, increment=True)
    view = _blocked_view() if _full(usage) else None
    if view is None:
        return
    address = _client_address(request)
    _, _, window, period = _counter(AUTH_FAILURES, address, str(rate))
    view.note(address, window)
    try:
        announce(redisguard.client(), view.key, address, window,
                 period + ratelimit_core.EXPIRATION_FUDGE)
    except Exception as exc:  # fail open: the counter still blocks it where it is read
        _warn_unavailable(exc)


def count_write(request: HttpRequest, tenant_id: int, user_id: str) -> None:
    """Count one write by this end user of this site; raise Throttled past the limit."""
    rate = settings.THROTTLE_WRITES
    usage = _count(WRITES, f"{tenant_id}:{user_id}", rate)
    if usage is not None and usage["should_limit"]:
        raise Throttled(
            f"too many writes by this user (limit {rate}); "
            f"retry after {max(1, usage['time_left'])} s",
            usage["time_left"],
        )


def _login_usages(request: HttpRequest, username: str, *,
                  increment: bool) -> list[dict[str, Any] | None]:
    rate = settings.THROTTLE_ADMIN_LOGIN
    return [
        _usage(request, ADMIN_LOGIN_ADDRESS, "ip", rate, increment=increment),
        # Per user too: guesses at one account spread over many addresses still add up.
        _usage(request, ADMIN_LOGIN_USER, lambda _group, _request: username[:150], rate,
               increment=increment),
    ]


def count_failed_login(sender: Any, credentials: dict[str, Any],
                       request: HttpRequest | None = None, **kwargs: Any) -> None:
    """`user_login_failed` receiver: count the failure by address and by username."""
    if request is not None:
        _login_usages(request, str(credentials.get("username", "")), increment=True)


def throttled_login(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """Wrap a login view: a POST from an address, or for a username, that failed too often
    is refused with 429 before the password is checked (not even a correct one gets in)."""

    @wraps(view)
    def login(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method == "POST":
            username = request.POST.get("username", "")
            full = [u for u in _login_usages(request, username, increment=False) if _full(u)]
            if full:
                wait = max(1, max(u["time_left"] for u in full if u is not None))
                return error(429, "rate_limited",
                             f"too many failed logins (limit {settings.THROTTLE_ADMIN_LOGIN} "
                             f"per address and per user); retry after {wait} s",
                             retry_after=wait)
        return view(request, *args, **kwargs)

    return login
