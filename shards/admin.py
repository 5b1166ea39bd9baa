"""Admin for the control data of shards: the tenant directory and the shard registry.

Both models live on `default`; the router sends the admin's reads to a caught-up control replica
and its writes (and reads inside the change views' transactions) to the control primary.

Editing a tenant's shard here is the "move by hand" path: `Tenant.save()` bumps the version and
the saved entry is written through to the directory caches. It moves no rows: use it only for a
tenant whose rows already are on the new shard (or that has none).
"""

from __future__ import annotations

import math
from typing import Any

from django import forms
from django.contrib import admin
from django.http import HttpRequest
from django.utils.html import format_html_join
from django.utils.safestring import mark_safe

from shards.errors import UnknownShard
from shards.models import Shard, Tenant
from shards.topology import Cluster, get_shard_map


def _shard_choices() -> list[tuple[str, str]]:
    # Built per form, from the topology: model field choices would freeze the shard list
    # into migrations.
    return [(name, name) for name in get_shard_map().shard_names]


class TenantForm(forms.ModelForm):
    shard = forms.ChoiceField(
        choices=_shard_choices,
        help_text="Changing it re-routes the tenant at once (version + 1); it copies no rows.",
    )

    class Meta:
        model = Tenant
        fields = ["slug", "shard", "state", "min_lsn"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "id", "shard", "state", "version", "min_lsn", "updated_at"]
    list_filter = ["shard", "state"]
    search_fields = ["slug"]
    readonly_fields = ["id", "version", "created_at", "updated_at"]
    fields = ["id", "slug", "shard", "state", "version", "min_lsn", "created_at", "updated_at"]
    ordering = ["slug"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # New tenants need placement and a global id: create them through the API.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Deleting the directory row would orphan the tenant's rows on its shard.
        return False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        fields = list(super().get_readonly_fields(request, obj))
        if obj is not None:
            fields.append("slug")  # URLs, cache keys and API clients know the tenant by it
        return fields


def _cluster(shard: Shard) -> Cluster | None:
    try:
        return get_shard_map().shard(shard.name)
    except UnknownShard:
        return None


def _format_lag(state: Any) -> str:
    if state is None:
        return "not checked yet"
    if not state.reachable:
        return "unreachable"
    if math.isinf(state.lag_seconds):
        return "unknown (not streaming)"
    return f"{state.lag_seconds:.3f} s"


@admin.register(Shard)
class ShardAdmin(admin.ModelAdmin):
    """Registry rows, with read-only columns from the topology and this worker's replica health
    checker (the same view of the replicas the router has)."""

    list_display = ["name", "generator_id", "accepts_tenants", "primary", "replicas",
                    "replica_lag", "healthy", "tenants"]
    list_editable = ["accepts_tenants"]
    readonly_fields = ["name", "generator_id", "created_at", "primary", "replicas",
                       "replica_lag", "healthy", "tenants"]
    fields = ["name", "generator_id", "accepts_tenants", "created_at", "primary", "replicas",
              "replica_lag", "healthy", "tenants"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        # A shard is added to the topology file and registered by migrate.
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # The registry row holds the shard's global id generator, which must never be reused.
        return False

    def changelist_view(self, request: HttpRequest, extra_context: Any = None) -> Any:
        self._health_states()  # one check up front if this worker has not checked yet
        return super().changelist_view(request, extra_context)

    def get_queryset(self, request: HttpRequest) -> Any:
        from django.db.models import Count, OuterRef, Subquery

        tenants = (Tenant.objects.filter(shard=OuterRef("name")).order_by()
                   .values("shard").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(tenant_count=Subquery(tenants))

    @staticmethod
    def _health_states() -> dict[str, Any]:
        from routers.replicas import get_replica_health

        health = get_replica_health()
        states = health.states()
        expected = {s.alias for c in get_shard_map().shards for s in c.replicas}
        if not expected <= set(states):
            health.check_once()  # returns within the check timeout, never raises
            states = health.states()
        return states

    @admin.display(description="primary")
    def primary(self, obj: Shard) -> str:
        cluster = _cluster(obj)
        return cluster.primary.alias if cluster else "not in the topology file"

    @admin.display(description="replicas")
    def replicas(self, obj: Shard) -> str:
        cluster = _cluster(obj)
        if cluster is None:
            return "-"
        return ", ".join(r.alias for r in cluster.replicas) or "none"

    @admin.display(description="replica lag")
    def replica_lag(self, obj: Shard) -> str:
        cluster = _cluster(obj)
        if cluster is None or not cluster.replicas:
            return "-"
        states = self._health_states()
        return format_html_join(
            mark_safe("<br>"), "{}: {}",
            ((r.alias, _format_lag(states.get(r.alias))) for r in cluster.replicas),
        )

    @admin.display(description="replicas healthy", boolean=True)
    def healthy(self, obj: Shard) -> bool | None:
        from routers.replicas import get_replica_health

        cluster = _cluster(obj)
        if cluster is None or not cluster.replicas:
            return None
        usable = get_replica_health().usable_replicas(cluster.name)
        return len(usable) == len(cluster.replicas)

    @admin.display(description="tenants", ordering="tenant_count")
    def tenants(self, obj: Shard) -> int:
        return getattr(obj, "tenant_count", None) or 0
