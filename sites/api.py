"""Ops endpoints: create and list sites. Authenticated by the ops token."""

from __future__ import annotations

import hmac
from typing import Annotated

from django.conf import settings
from django.http import HttpRequest
from ninja import Path, Query, Router
from ninja.security import APIKeyHeader

from shards.aliases import CONTROL_ALIAS
from shards.models import Tenant
from sites import throttle
from sites.models import Site
from sites.schemas import ErrorOut, OriginsIn, OriginsOut, SiteCreatedOut, SiteIn, SitePageOut
from sites.service import create_site, set_origins


class OpsToken(APIKeyHeader):
    param_name = "X-Ops-Token"

    def authenticate(self, request: HttpRequest, key: str | None) -> bool:
        if not key:
            return False
        throttle.refuse_failing_client(request)
        expected = settings.OPS_TOKEN
        # Bytes: compare_digest refuses str with non-ASCII characters (a header may carry any).
        if expected and hmac.compare_digest(expected.encode(), key.encode()):
            return True
        throttle.count_failed_check(request)
        return False


router = Router(auth=OpsToken(), tags=["ops"])
ERRORS = {400: ErrorOut, 401: ErrorOut, 409: ErrorOut, 413: ErrorOut, 422: ErrorOut,
          429: ErrorOut, 503: ErrorOut}


@router.post("/sites", response={201: SiteCreatedOut, **ERRORS})
def create(request: HttpRequest, payload: SiteIn):
    """Create a site: placed on a shard by the placement policy unless `shard` is given."""
    made = create_site(payload.slug, payload.name, shard=payload.shard)
    created = Tenant.objects.using(CONTROL_ALIAS).get(id=made.entry.id).created_at
    return 201, {"slug": made.entry.slug, "name": made.name, "shard": made.entry.shard,
                 "created_at": created, "api_key": made.api_key, "public_key": made.public_key}


@router.get("/sites", response={200: SitePageOut, **ERRORS})
def list_sites(
    request: HttpRequest,
    after: Annotated[str | None, Query(max_length=63, description="next_cursor")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
):
    """Sites with their shard, by slug."""
    rows = Site.objects.select_related("tenant").order_by("tenant__slug")
    if after:
        rows = rows.filter(tenant__slug__gt=after)
    page = list(rows[: limit + 1])
    items = [{"slug": s.tenant.slug, "name": s.name, "shard": s.tenant.shard,
              "created_at": s.tenant.created_at} for s in page[:limit]]
    next_cursor = items[-1]["slug"] if len(page) > limit else None
    return {"items": items, "next_cursor": next_cursor}


@router.put("/sites/{slug}/origins", response={200: OriginsOut, 404: ErrorOut, **ERRORS})
def put_origins(request: HttpRequest,
                slug: Annotated[str, Path(max_length=63, description="the site's slug")],
                payload: OriginsIn):
    """Set the browser origins the site's publishable key works from (the widget's pages),
    replacing the list; an empty list turns browser access off."""
    try:
        site = set_origins(slug, payload.origins, new_public_key=payload.new_public_key)
    except LookupError:
        return 404, {"error": "not_found", "message": f"no site {slug!r}"}
    except ValueError as exc:
        return 422, {"error": "invalid", "message": str(exc)}
    return {"slug": slug, "public_key": site.public_key, "origins": site.allowed_origins}
