"""Creating and listing sites (ops work, on the control database)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from shards.aliases import CONTROL_ALIAS
from shards.directory import TenantEntry, create_tenant
from shards.models import Tenant
from sites.models import Site
from sites.public_keys import MAX_ORIGINS, normalize_origin


class SiteExists(ValueError):
    pass


@dataclass(frozen=True)
class NewSite:
    entry: TenantEntry
    name: str
    api_key: str
    public_key: str


def create_site(slug: str, name: str, *, shard: str | None = None) -> NewSite:
    """A tenant placed by the placement policy (or on `shard`) plus its site row and key, in
    one control transaction: a failure leaves neither behind."""
    if Tenant.objects.using(CONTROL_ALIAS).filter(slug=slug).exists():
        raise SiteExists(f"a site with slug {slug!r} already exists")
    raw_key = Site.new_key()
    try:
        with transaction.atomic(using=CONTROL_ALIAS):
            entry = create_tenant(slug, shard=shard)
            site = Site(tenant_id=entry.id, name=name, public_key=Site.new_public_key())
            site.set_key(raw_key)
            site.save(using=CONTROL_ALIAS)
    except IntegrityError as exc:
        raise SiteExists(f"a site with slug {slug!r} already exists") from exc
    assert site.public_key is not None
    return NewSite(entry=entry, name=name, api_key=raw_key, public_key=site.public_key)


def rotate_key(site: Site) -> str:
    raw_key = Site.new_key()
    site.set_key(raw_key)
    site.save(using=CONTROL_ALIAS)
    return raw_key


def set_origins(slug: str, origins: list[str], *, new_public_key: bool = False) -> Site:
    """Set the browser origins a site's publishable key works from (normalized, deduplicated),
    making the key if the site has none yet, or a fresh one when asked. LookupError for an
    unknown slug, ValueError for something that is not an origin."""
    cleaned = sorted({normalize_origin(origin) for origin in origins})
    if len(cleaned) > MAX_ORIGINS:
        raise ValueError(f"at most {MAX_ORIGINS} origins per site")
    with transaction.atomic(using=CONTROL_ALIAS):
        site = (Site.objects.using(CONTROL_ALIAS).select_for_update()
                .filter(tenant__slug=slug).first())
        if site is None:
            raise LookupError(f"no site {slug!r}")
        site.allowed_origins = cleaned
        if new_public_key or not site.public_key:
            site._previous_public_key = site.public_key  # type: ignore[attr-defined]
            site.public_key = Site.new_public_key()
        site.save(using=CONTROL_ALIAS, update_fields=["allowed_origins", "public_key"])
    return site
