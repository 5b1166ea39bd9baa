"""Creating and listing sites (ops work, on the control database)."""

from __future__ import annotations

from dataclasses import dataclass

from django.db import IntegrityError, transaction

from shards.aliases import CONTROL_ALIAS
from shards.directory import TenantEntry, create_tenant
from shards.models import Tenant
from sites.models import Site


class SiteExists(ValueError):
    pass


@dataclass(frozen=True)
class NewSite:
    entry: TenantEntry
    name: str
    api_key: str


def create_site(slug: str, name: str, *, shard: str | None = None) -> NewSite:
    """A tenant placed by the placement policy (or on `shard`) plus its site row and key, in
    one control transaction: a failure leaves neither behind."""
    if Tenant.objects.using(CONTROL_ALIAS).filter(slug=slug).exists():
        raise SiteExists(f"a site with slug {slug!r} already exists")
    raw_key = Site.new_key()
    try:
        with transaction.atomic(using=CONTROL_ALIAS):
            entry = create_tenant(slug, shard=shard)
            site = Site(tenant_id=entry.id, name=name)
            site.set_key(raw_key)
            site.save(using=CONTROL_ALIAS)
    except IntegrityError as exc:
        raise SiteExists(f"a site with slug {slug!r} already exists") from exc
    return NewSite(entry=entry, name=name, api_key=raw_key)


def rotate_key(site: Site) -> str:
    raw_key = Site.new_key()
    site.set_key(raw_key)
    site.save(using=CONTROL_ALIAS)
    return raw_key
