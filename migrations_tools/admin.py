"""Admin for the control data of shards: the tenant directory and the shard registry.

Both models live on `default`; the router sends the admin's reads to a caught-up control replica
and its writes (and reads inside the change views' transactions) to the control primary.

Editing a tenant's shard here is the "move by hand" path: `Tenant.save()` bumps the version and
the saved entry is written through to the directory caches. It moves no rows: use it only for a
tenant whose rows already are on the new shard (or that has none).

The tenant list's action "Move to another shard" is the online move: it asks for the target,
then starts `manage.py move_tenant <id> <target>` in the background (a detached process with
this process's environment, output in a log file next to the topology file: `admin_moves.py`),
and the move jobs (`MoveJob`, read-only here) show its state and progress.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import mark_safe

from migrations_tools.admin_moves import MoveTargetForm, launch_moves, move_form_template
from migrations_tools.lock import current_holder
from migrations_tools.move_progress import progress_text, shown_lag
from migrations_tools.tenant_sizes import tenant_sizes
from shards.aliases import CONTROL_ALIAS
from shards.errors import UnknownShard
from shards.lsn import format_lsn, parse_lsn
from shards.models import MoveJob, Shard, Tenant
from shards.runtime import replica_health
from shards.topology import Cluster, get_shard_map


def _shard_choices() -> list[tuple[str, str]]:
    # Built per form, from the topology: model field choices would freeze the shard list
    # into migrations.
    return [(name, name) for name in get_shard_map().shard_names]


class LsnField(forms.Field):
    """A WAL position shown as PostgreSQL prints it ("16/B374D848") and stored as an int; it
    takes either form back."""

    widget = forms.TextInput

    def prepare_value(self, value: Any) -> Any:
        return format_lsn(value) if isinstance(value, int) else value

    def to_python(self, value: Any) -> int:
        text = str(value or "").strip() or "0/0"
        if text.isdigit():  # a byte position, as the field stores it
            return int(text)
        try:
            return parse_lsn(text)
        except ValueError as exc:
            raise forms.ValidationError(str(exc)) from exc


class TenantForm(forms.ModelForm):
    shard = forms.ChoiceField(
        choices=_shard_choices,
        help_text="Changing it re-routes the tenant at once (version + 1); it copies no rows.",
    )
    min_lsn = LsnField(
        label="min LSN", required=False,
        help_text="WAL position a replica of the shard must have replayed to serve the tenant.",
    )

    class Meta:
        model = Tenant
        fields = ["slug", "shard", "state", "min_lsn"]


@admin.register(Tenant)
class TenantAdmin(admin.ModelAdmin):
    form = TenantForm
    list_display = ["slug", "id", "shard", "state", "version", "rows", "size", "min_position",
                    "updated_at"]
    list_filter = ["shard", "state"]
    search_fields = ["slug"]
    readonly_fields = ["id", "version", "created_at", "updated_at"]
    fields = ["id", "slug", "shard", "state", "version", "min_lsn", "created_at", "updated_at"]
    ordering = ["slug"]
    actions = ["move_to_another_shard"]

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

    @admin.display(description="min LSN", ordering="min_lsn")
    def min_position(self, obj: Tenant) -> str:
        return format_lsn(obj.min_lsn)

    def get_changelist_instance(self, request: HttpRequest) -> Any:
        changelist = super().get_changelist_instance(request)
        # One query per shard for the tenants of this page, not one per row.
        measured = tenant_sizes(list(changelist.result_list))
        for tenant in changelist.result_list:
            tenant.measured = measured.get(tenant.pk)
        return changelist

    @admin.display(description="rows")
    def rows(self, obj: Tenant) -> str:
        measured = getattr(obj, "measured", None)
        return "?" if measured is None else str(measured[0])

    @admin.display(description="size (bytes)")
    def size(self, obj: Tenant) -> str:
        measured = getattr(obj, "measured", None)
        return "?" if measured is None else str(measured[1])

    @admin.action(description="Move to another shard (online, in the background)")
    def move_to_another_shard(self, request: HttpRequest, queryset: QuerySet[Tenant]) -> Any:
        tenants = list(queryset.using(CONTROL_ALIAS).order_by("slug"))
        applying = "apply" in request.POST
        form = MoveTargetForm(request.POST if applying else None)
        if applying and form.is_valid():
            self._start_moves(request, tenants, form.cleaned_data["target"])
            return None  # back to the tenant list, with the messages
        context = {
            **self.admin_site.each_context(request),
            "title": "Move tenants to another shard",
            "subtitle": None,
            "opts": self.model._meta,
            "tenants": tenants,
            "form": form,
            "action": "move_to_another_shard",
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
            "jobs_url": reverse("admin:shards_movejob_changelist"),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, move_form_template(), context)

    def _start_moves(self, request: HttpRequest, tenants: list[Tenant], target: str) -> None:
        active = {job.tenant_id: job for job in MoveJob.objects.using(CONTROL_ALIAS).filter(
            tenant__in=tenants, state__in=MoveJob.ACTIVE_STATES)}
        chosen = []
        for tenant in tenants:
            job = active.get(tenant.pk)
            if job is not None and job.target != target:
                messages.warning(request, f"{tenant.slug} is already moving to {job.target} "
                                          f"(job {job.pk}, {job.state}): not started")
            elif job is None and tenant.shard == target:
                messages.warning(request, f"{tenant.slug} is already on {target}: not moved")
            else:
                chosen.append(tenant)
        if not chosen:
            return
        holder = current_holder()
        if holder is not None:
            messages.error(request, f"the cluster lock is held by {holder.describe()}: a move "
                                    "would fail at once. Try again when it is free.")
            return
        user = getattr(request.user, "get_username", lambda: "?")()
        try:
            pid, log = launch_moves([(t.pk, t.slug) for t in chosen], target,
                                    reason=f"admin: {user}")
        except OSError as exc:
            messages.error(request, f"could not start the move: {exc}")
            return
        for tenant in chosen:
            self.log_change(request, tenant, f"Started an online move to {target}.")
        slugs = ", ".join(t.slug for t in chosen)
        messages.success(request, format_html(
            "Started moving {} to {} in the background (pid {}, log {}). Follow it in "
            '<a href="{}">move jobs</a>.', slugs, target, pid, log,
            reverse("admin:shards_movejob_changelist")))


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
        tenants = (Tenant.objects.filter(shard=OuterRef("name")).order_by()
                   .values("shard").annotate(n=Count("id")).values("n"))
        return super().get_queryset(request).annotate(tenant_count=Subquery(tenants))

    @staticmethod
    def _health_states() -> Mapping[str, Any]:
        health = replica_health()
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
        cluster = _cluster(obj)
        if cluster is None or not cluster.replicas:
            return None
        usable = replica_health().usable_replicas(cluster.name)
        return len(usable) == len(cluster.replicas)

    @admin.display(description="tenants", ordering="tenant_count")
    def tenants(self, obj: Shard) -> int:
        return getattr(obj, "tenant_count", None) or 0


# --- the move jobs ----------------------------------------------------------------------------


@admin.register(MoveJob)
class MoveJobAdmin(admin.ModelAdmin):
    """Online moves (run by move_tenant, rebalance or the tenant action): read-only."""

    list_display = ["id", "tenant_slug", "source", "target", "state", "progress", "lag",
                    "write_pause", "verified", "created_at", "finished_at"]
    list_display_links = ["id", "tenant_slug"]
    list_filter = ["state", "source", "target"]
    list_select_related = ["tenant"]
    search_fields = ["tenant__slug"]
    ordering = ["-created_at"]
    readonly_fields = ("id", "tenant", "source", "target", "state", "reason", "progress",
                       "rows_total", "rows_copied", "lag", "write_pause", "flip_position",
                       "verified", "error", "created_at", "updated_at", "finished_at",
                       "replication_name", "report_json")
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # moves are started with move_tenant, rebalance or the tenant action

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the state machine owns these rows

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # the history of moves; unique names of replication objects

    @admin.display(description="tenant", ordering="tenant__slug")
    def tenant_slug(self, obj: MoveJob) -> str:
        return obj.tenant.slug

    @admin.display(description="progress")
    def progress(self, obj: MoveJob) -> str:
        return progress_text(obj.rows_copied, obj.rows_total)

    @admin.display(description="lag")
    def lag(self, obj: MoveJob) -> str:
        lag = shown_lag(obj.state, obj.lag_bytes)
        return "-" if lag is None else f"{lag} bytes"

    @admin.display(description="flip LSN")
    def flip_position(self, obj: MoveJob) -> str:
        return "-" if obj.flip_lsn is None else format_lsn(obj.flip_lsn)

    @admin.display(description="write pause", ordering="write_pause_ms")
    def write_pause(self, obj: MoveJob) -> str:
        return "-" if obj.write_pause_ms is None else f"{obj.write_pause_ms:.1f} ms"

    @admin.display(description="replication objects")
    def replication_name(self, obj: MoveJob) -> str:
        return obj.replication_name

    @admin.display(description="report")
    def report_json(self, obj: MoveJob) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.report or {}, indent=2,
                                                       sort_keys=True))
