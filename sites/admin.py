"""Admin for sites: name, slug, shard, created, the key hint, and key rotation.

Keys are stored hashed, so the admin can never show a site's current key: rotation makes a new
one and shows it once, in the message after the action. Sites are created through the ops API
(placement and the first key come with it), not here.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from sites.models import Site
from sites.service import rotate_key


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "shard", "created_at", "api_key_hint"]
    list_select_related = ["tenant"]
    search_fields = ["name", "tenant__slug"]
    list_filter = ["tenant__shard"]
    fields = ["name", "slug", "shard", "api_key_hint", "created_at"]
    readonly_fields = ["slug", "shard", "api_key_hint", "created_at"]
    ordering = ["tenant__slug"]
    actions = ["rotate_api_key"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The site's comments stay on its shard: deleting the row would orphan them.
        return False

    @admin.display(description="slug", ordering="tenant__slug")
    def slug(self, obj: Site) -> str:
        return obj.tenant.slug

    @admin.display(description="shard", ordering="tenant__shard")
    def shard(self, obj: Site) -> str:
        return obj.tenant.shard

    @admin.action(description="Rotate the API key (the old key stops working)")
    def rotate_api_key(self, request: HttpRequest, queryset: QuerySet[Site]) -> None:
        for site in queryset.select_related("tenant"):
            raw_key = rotate_key(site)
            self.log_change(request, site, "Rotated the API key.")
            messages.warning(
                request,
                f"New API key for {site.tenant.slug}: {raw_key} (shown once: store it now; "
                "the old key stops working within seconds)",
            )
