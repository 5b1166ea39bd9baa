"""Who is calling: a site's API key, and optionally one of its end users.

End-user identities are issued by the service (`POST /users/token`, called by the site's backend
with its API key) and signed with the service's secret, bound to the site: a token of one site is
worthless on another. A token also carries the generation of the site's key it was issued under
(`g`): rotating the key revokes every token issued before.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from django.core import signing
from django.http import HttpRequest
from ninja.errors import HttpError
from ninja.security import APIKeyHeader

from routers.state import request_tenant
from shards.directory import TenantEntry
from sites import throttle
from sites.keys import owner_of_key

USER_HEADER = "X-User-Token"
_SALT = "shardsvc.user"
USER_TOKEN_MAX_AGE = 30 * 86400
MAX_USER = 150  # user ids and names, as UserTokenIn takes them and comments store them


class SiteKey(APIKeyHeader):
    param_name = "X-Api-Key"

    def authenticate(self, request: HttpRequest, key: str | None) -> TenantEntry | None:
        entry = request_tenant()
        if entry is None or not key:
            return None
        throttle.refuse_failing_client(request)  # before the lookup: refused guesses cost none
        owner = owner_of_key(key) if len(key) <= 200 else None
        if owner is not None and owner.tenant_id == entry.id:
            request.key_generation = owner.generation  # type: ignore[attr-defined]
            return entry
        if owner is not None:
            # A real key of another site probing this one: answer as if nothing were here,
            # so ids and URLs of other sites leak nothing.
            raise HttpError(404, "no such resource on this site")
        throttle.count_failed_check(request)
        return None


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
    if request.headers.get(USER_HEADER):
        throttle.refuse_failing_client(request)
        try:
            return _end_user(request)
        except HttpError:
            throttle.count_failed_check(request)  # a wrong token, not a missing one
            raise
    return _end_user(request)


def _end_user(request: HttpRequest) -> EndUser:
    raw = request.headers.get(USER_HEADER)
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
