"""Who is calling: a site's API key, and optionally one of its end users.

End-user identities are issued by the service (`POST /users/token`, called by the site's backend
with its API key) and signed with the service's secret, bound to the site: a token of one site is
worthless on another. A token also carries the generation of the site's key it was issued under
(`g`): rotating the key revokes every token issued before.

A site has two keys. The secret key (`sk_...`) is for its backend: it may do everything,
including signing user tokens for any user id, so it is refused from any web page (a request
with an `Origin` header). The publishable key (`pk_...`, sites/public_keys.py) is for its pages:
it works only from the site's allowed origins and only for what a page needs (reading, and
writing as the end user named by a token the backend signed).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from django.core import signing
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyHeader, APIKeyQuery

from routers.state import request_tenant
from shards.directory import TenantEntry
from sites import throttle
from sites.keys import known_owner_of_key, owner_of_key
from sites.models import PUBLIC_KEY_PREFIX
from sites.public_keys import PublicKeyOwner, normalize_origin, owner_of_public_key

USER_HEADER = "X-User-Token"
# The headers of every site request are read from META (as WSGI names them): request.headers
# would build a mapping of all of them first (sites/cors.py skips it too).
_USER_META = "HTTP_X_USER_TOKEN"
_API_KEY_META = "HTTP_X_API_KEY"
_SALT = "shardsvc.user"
USER_TOKEN_MAX_AGE = 30 * 86400
MAX_USER = 150  # user ids and names, as UserTokenIn takes them and comments store them


class SiteKey(APIKeyHeader):
    param_name = "X-Api-Key"

    def _get_key(self, request: HttpRequest) -> str | None:
        return request.META.get(_API_KEY_META)

    def authenticate(self, request: HttpRequest, key: str | None) -> TenantEntry | None:
        entry = request_tenant()
        if entry is None or not key:
            return None
        owner = known_owner_of_key(key) if _reads_the_page_cache(request) else None
        if owner is not None:
            # Already known here as a site's key: no lookup at stake, so the address's check
            # goes with the page cache's own Redis read (or before the answer leaves).
            throttle.defer_failing_client_check(request)
        else:
            throttle.refuse_failing_client(request)  # before the lookup: guesses cost none
            if key.startswith(PUBLIC_KEY_PREFIX):
                return _publishable(request, entry, key)
            owner = owner_of_key(key) if len(key) <= 200 else None
        if owner is not None and owner.tenant_id == entry.id:
            if "HTTP_ORIGIN" in request.META:
                # Browsers add Origin to every cross-origin call (and same-origin writes); a
                # backend does not. A secret key in a page can sign tokens for any user.
                raise HttpError(403, "a secret API key (sk_...) must never be used from a web "
                                     "page: this request carries an Origin header. Use the "
                                     "site's publishable key (pk_...) in pages, and keep the "
                                     "secret key on the site's backend")
            request.key_generation = owner.generation  # type: ignore[attr-defined]
            return entry
        if owner is not None:
            # A real key of another site probing this one: answer as if nothing were here,
            # so ids and URLs of other sites leak nothing.
            raise HttpError(404, "no such resource on this site")
        throttle.count_failed_check(request)
        return None


# The views whose first Redis read is the cached page's MGET, which can carry the address's
# throttle check. Anywhere else a deferred check would be a GET after the database work, which
# holds the request's connection longer: measured with bench_perf, the single-row read fell
# from 684-777 to 474-514 req/s at 64 connections when every known-key GET deferred its check.
_PAGE_VIEWS = frozenset({"list_comments"})


def _reads_the_page_cache(request: HttpRequest) -> bool:
    match = request.resolver_match
    return (request.method in ("GET", "HEAD") and match is not None
            and match.url_name in _PAGE_VIEWS)


class PublicKeyQuery(APIKeyQuery):
    """The publishable key in the query (?key=pk_...), for EventSource, which cannot send
    headers. Publishable keys only: a secret key in a URL would end up in access logs."""

    param_name = "key"

    def authenticate(self, request: HttpRequest, key: str | None) -> TenantEntry | None:
        entry = request_tenant()
        if entry is None or not key or not key.startswith(PUBLIC_KEY_PREFIX):
            return None
        throttle.refuse_failing_client(request)
        return _publishable(request, entry, key)


def _publishable(request: HttpRequest, entry: TenantEntry, key: str) -> TenantEntry | None:
    owner = owner_of_public_key(key) if len(key) <= 200 else None
    if owner is None:
        throttle.count_failed_check(request)
        return None
    if owner.tenant_id != entry.id:
        raise HttpError(404, "no such resource on this site")
    origin = request.META.get("HTTP_ORIGIN", "")
    try:
        allowed = normalize_origin(origin) in owner.origins
    except ValueError:
        allowed = False
    if not allowed:
        raise HttpError(403, "this publishable key works only from a web page of one of the "
                             f"site's allowed origins, and {origin[:100] or 'no Origin'!r} is "
                             "not one (the site's operator sets them: "
                             "PUT /api/ops/sites/<site>/origins)")
    request.key_generation = owner.generation  # type: ignore[attr-defined]
    request.public_key = owner  # type: ignore[attr-defined]
    return entry


def public_key_of(request: HttpRequest) -> PublicKeyOwner | None:
    """The publishable key the request was authenticated with; None for the secret key."""
    return getattr(request, "public_key", None)


def require_secret_key(request: HttpRequest, action: str) -> None:
    if public_key_of(request) is not None:
        raise HttpError(403, f"{action} needs the site's secret API key, from its backend; "
                             "a publishable key cannot do it")


def check_page_url(request: HttpRequest, url: str) -> None:
    """With a publishable key, threads are made only for pages of the site's own origins: a
    key copied from a page cannot fill the site with threads of anyone's URLs."""
    owner = public_key_of(request)
    if owner is None:
        return
    try:
        origin = normalize_origin(_origin_of(url))
    except ValueError:
        origin = ""
    if origin not in owner.origins:
        raise HttpError(403, "with a publishable key, a thread's URL must be a page of one of "
                             "the site's allowed origins")


def _origin_of(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0].split('?', 1)[0].split('#', 1)[0]}"


def site_of_request() -> TenantEntry:
    """The site the request named (site endpoints are only reached with one)."""
    entry = request_tenant()
    if entry is None:
        raise HttpError(404, "no such resource on this site")
    return entry


@dataclass(frozen=True)
class EndUser:
    id: str
    name: str


def issue_user_token(request: HttpRequest, user_id: str, name: str) -> str:
    """A token for one end user of the request's site, under the generation of its key."""
    entry = site_of_request()
    payload = {"t": entry.id, "u": user_id, "n": name,
               "g": request.key_generation}  # type: ignore[attr-defined]
    return signing.dumps(payload, salt=_SALT, compress=True)


def end_user(request: HttpRequest) -> EndUser:
    """The signed end user of this request, or a 401 that says how to get one."""
    if request.META.get(_USER_META):
        throttle.refuse_failing_client(request)
        try:
            return _end_user(request)
        except HttpError:
            throttle.count_failed_check(request)  # a wrong token, not a missing one
            raise
    return _end_user(request)


def _end_user(request: HttpRequest) -> EndUser:
    raw = request.META.get(_USER_META)
    entry = site_of_request()
    if not raw:
        raise HttpError(401, f"this action needs an end user: send {USER_HEADER} "
                             "(issued by POST /api/sites/<site>/users/token)")
    try:
        payload = signing.loads(raw, salt=_SALT, max_age=USER_TOKEN_MAX_AGE)
    except (signing.BadSignature, ValueError, zlib.error):
        # ValueError, zlib.error: correctly signed bytes that are not compressed JSON.
        raise HttpError(401, f"{USER_HEADER} is invalid or expired") from None
    if not isinstance(payload, dict):
        raise HttpError(401, f"{USER_HEADER} is not a user identity")
    site = payload.get("t")
    # bool is an int to Python: a payload with "t": true must not pass for tenant 1.
    if type(site) is not int or site != entry.id:
        raise HttpError(401, f"{USER_HEADER} was issued for another site")
    # Tokens issued before generations existed have no "g": they belong to the first one.
    generation = payload.get("g", 1)
    if type(generation) is not int or generation != getattr(request, "key_generation", None):
        raise HttpError(401, f"{USER_HEADER} was issued under a rotated API key: "
                             "issue a new one (POST /api/sites/<site>/users/token)")
    user, name = payload.get("u"), payload.get("n", "")
    if not (isinstance(user, str) and 0 < len(user) <= MAX_USER
            and isinstance(name, str) and len(name) <= MAX_USER):
        raise HttpError(401, f"{USER_HEADER} is not a user identity")
    return EndUser(id=user, name=name)
