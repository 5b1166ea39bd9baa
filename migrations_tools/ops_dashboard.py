"""The ops dashboard at /admin/ops/: the fleet on one page, in the admin's look, for staff.

The page itself holds the shard map (measured when it loads); moves, charts, alerts and the
Patroni clusters (members, failover history, switchovers) are JSON endpoints that
static/migrations_tools/ops.js polls and draws (inline SVG, no CDN). Its buttons run what the CLI
runs, detached as the tenant admin's move action does (`admin_moves.launch_commands`):
`move_tenant <tenant> <target>`, `move_tenant <tenant> --abort` and
`switchover <cluster> [--to <member>]` (migrations_tools/ops_switchover.py checks its request).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib import admin, messages
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect
from django.template import engines
from django.template.response import TemplateResponse
from django.urls import path
from django.views.decorators.http import require_POST

from migrations_tools import fleet_status, patroni_status, switchover_runs
from migrations_tools.admin_moves import launch_commands
from migrations_tools.lock import current_holder
from migrations_tools.ops_prometheus import (
    CHARTS,
    PrometheusUnavailable,
    chart_series,
    firing_alerts,
)
from migrations_tools.ops_switchover import (
    RefusedRequest,
    check_request,
    cluster_view,
    member_row,
)
from project.errors import error
from shards import patroni
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob, Tenant
from shards.topology import get_shard_map

# The start-a-move form offers this many tenants (by slug); more belong to the CLI.
TENANT_CHOICES_LIMIT = 500
OPERATE_PERMISSION = "shards.change_tenant"

_PAGE = """{% extends "admin/base_site.html" %}{% load static %}
{% block extrastyle %}{{ block.super }}
<link rel="stylesheet" href="{% static 'migrations_tools/ops.css' %}">{% endblock %}
{% block extrahead %}{{ block.super }}
<script src="{% static 'migrations_tools/ops.js' %}" defer></script>{% endblock %}
{% block breadcrumbs %}<div class="breadcrumbs"><a href="{% url 'admin:index' %}">Home</a>
&rsaquo; Operations</div>{% endblock %}
{% block content %}
<div id="ops" data-moves-url="moves.json" data-alerts-url="alerts.json"
     data-series-url="series.json" data-abort-url="abort/" data-patroni-url="patroni.json"
     data-switchover-url="switchover/">{% csrf_token %}
<div class="module"><h2>Alerts firing</h2><ul id="ops-alerts"><li>loading…</li></ul></div>

<div class="module"><h2>Shard map</h2>
<table id="ops-shards"><thead><tr><th>Cluster</th><th>Tenants</th><th>Rows</th><th>Size</th>
<th>Members (role, lag; under Patroni: role, state, timeline, lag)</th><th>Switchover</th>
</tr></thead><tbody>
{% for c in clusters %}<tr data-cluster="{{ c.name }}"{% if c.patroni %} data-patroni{% endif %}>
<th>{{ c.name }}</th><td>{{ c.tenants }}</td><td>{{ c.rows }}</td><td>{{ c.size }}</td><td>
<ul class="ops-members">{% for m in c.members %}<li class="{{ m.up|yesno:'up,down' }}"
data-member="{{ m.alias }}" data-role="{{ m.role }}">{{ m.text }}</li>{% endfor %}</ul>
{% if c.error %}<p class="errornote">{{ c.error }}</p>{% endif %}{% if c.patroni %}
<p class="errornote ops-patroni-error"{% if not c.patroni_error %} hidden{% endif %}>
{{ c.patroni_error }}</p>{% endif %}</td>
<td class="ops-switchover">{% if not c.patroni %}<button type="button" disabled
title="not managed by Patroni">Switch over</button> <span class="ops-none">Not under Patroni
(plain topology): no member to hand over to.</span>{% elif not can_operate %}<span
class="ops-none">Needs the “change tenant” permission.</span>{% endif %}
<p class="ops-switchover-notice" hidden></p><p class="ops-switchover-status"></p></td></tr>
{% endfor %}
</tbody></table></div>

<div class="module"><h2>Last failovers</h2><p id="ops-failovers-none" class="ops-none"
{% if patroni_clusters %}hidden{% endif %}>No cluster runs under Patroni: no failover history.</p>
<table id="ops-failovers"{% if not patroni_clusters %} hidden{% endif %}><thead><tr>
<th>Cluster</th><th>Timeline</th><th>When</th><th>Old leader → new leader</th><th>Reason</th>
</tr></thead><tbody></tbody></table></div>

<div class="module"><h2>Moves in progress</h2><div id="ops-moves"><p>loading…</p></div></div>
<div class="module"><h2>Last moves</h2><table id="ops-recent"><thead><tr><th>Job</th>
<th>Tenant</th><th>From → to</th><th>State</th><th>Verified</th><th>Write pause</th>
<th>Finished</th></tr></thead><tbody></tbody></table></div>

<div class="module"><h2>Per shard and role, last 15 minutes</h2>
<p id="ops-charts-error" class="errornote" hidden></p>
{% for name, chart in charts %}<figure class="ops-chart"><figcaption>{{ chart.title }}</figcaption>
<svg id="chart-{{ name }}" data-chart="{{ name }}" viewBox="0 0 640 180" role="img"
     aria-label="{{ chart.title }}"></svg><ul class="ops-legend" id="legend-{{ name }}"></ul>
</figure>{% endfor %}</div>

<div class="module"><h2>Start a move</h2>
{% if can_operate %}<form method="post" action="start/" id="ops-start"
      data-confirm="Start moving this tenant online? Its writes pause briefly at the cutover.">
{% csrf_token %}<label>Tenant <select name="tenant" required>
{% for t in tenants %}<option value="{{ t.id }}">{{ t.slug }} (on {{ t.shard }})</option>
{% endfor %}</select></label>
<label>Target shard <select name="target" required>{% for s in shards %}
<option>{{ s }}</option>{% endfor %}</select></label>
<input type="submit" value="Start the move"></form>
{% else %}<p>Starting and aborting moves needs the “change tenant” permission.</p>{% endif %}
</div>
</div>
{% endblock %}
"""


def _page_template() -> Any:
    # An inline template, as admin_moves does: the only page this part adds.
    return engines["django"].from_string(_PAGE)


def _can_operate(request: HttpRequest) -> bool:
    return bool(request.user.has_perm(OPERATE_PERMISSION))


def shard_map() -> list[dict[str, Any]]:
    """Every cluster (control first) with its members' role, reachability and lag, and for
    shards their tenants, rows and size."""
    # Patroni clusters show Patroni's own view of their members (below): only the others are
    # checked server by server.
    servers = fleet_status.check_servers(
        [c.name for c in get_shard_map().clusters if not c.patroni])
    summaries = {s.name: s for s in fleet_status.summarize_shards()}
    clusters: list[dict[str, Any]] = []
    for cluster in get_shard_map().clusters:
        summary = summaries.get(cluster.name)
        patroni_error = ""
        if cluster.patroni:
            # Patroni's roles, not the topology file's: they change with every failover.
            roles = patroni_status.read_roles(cluster)
            patroni_error = roles.error
            members = [_patroni_member(m) for m in roles.members]
        else:
            members = [{"alias": s.alias, "role": s.role, "up": s.up,
                        "text": f"{s.alias}: {s.role}, "
                                + (s.describe_lag() if s.up else f"down: {s.error}")}
                       for s in servers if s.cluster == cluster.name]
        clusters.append({
            "name": cluster.name,
            "patroni": bool(cluster.patroni),
            "tenants": summary.tenants if summary else "-",
            "rows": summary.rows if summary else "-",
            "size": fleet_status.human_bytes(summary.size_bytes) if summary else "-",
            "error": summary.error if summary else "",
            "patroni_error": patroni_error,
            "members": members,
        })
    return clusters


def _patroni_member(member: dict[str, Any]) -> dict[str, Any]:
    row = member_row(member)
    # The same words ops.js writes when it refreshes them.
    text = f"{row['name']}: {row['role']}, {row['state']}, timeline {row['timeline']}"
    return {"alias": row["name"], "role": row["role"], "text": text + (
                f", lag {row['lag']}" if row["lag"] is not None else ""),
            "up": row["state"] in ("running", "streaming")}


def ops_page(request: HttpRequest) -> HttpResponse:
    site = admin.site
    clusters = shard_map()
    context = {
        **site.each_context(request),
        "title": "Operations",
        "subtitle": None,
        "clusters": clusters,
        "patroni_clusters": any(c["patroni"] for c in clusters),
        "charts": list(CHARTS.items()),
        "can_operate": _can_operate(request),
        "tenants": list(Tenant.objects.using(CONTROL_ALIAS).order_by("slug")
                        .values("id", "slug", "shard")[:TENANT_CHOICES_LIMIT]),
        "shards": get_shard_map().shard_names,
    }
    request.current_app = site.name
    return TemplateResponse(request, _page_template(), context)


def _job(job: MoveJob) -> dict[str, Any]:
    total = max(job.rows_total, 0)
    return {
        "id": job.pk, "tenant": job.tenant.slug, "source": job.source, "target": job.target,
        "state": job.state,
        # Rows copied can pass the estimate taken at the start: never more than 100 %.
        "rows_copied": min(job.rows_copied, total) if total else job.rows_copied,
        "rows_total": total,
        "lag_bytes": job.lag_bytes if job.state in MoveJob.ACTIVE_STATES else None,
        "write_pause_ms": job.write_pause_ms, "verified": job.verified,
        "started": job.created_at.isoformat(),
        "finished": job.finished_at.isoformat() if job.finished_at else None,
    }


def moves_json(request: HttpRequest) -> JsonResponse:
    active, recent = fleet_status.moves()
    return JsonResponse({"active": [_job(j) for j in active],
                         "recent": [_job(j) for j in recent],
                         "can_operate": _can_operate(request)})


def series_json(request: HttpRequest) -> HttpResponse:
    name = request.GET.get("chart", "")
    if name not in CHARTS:
        return error(400, "unknown_chart", f"chart must be one of {', '.join(CHARTS)}")
    try:
        minutes = int(request.GET.get("minutes", "15"))
    except ValueError:
        minutes = 0
    if not 1 <= minutes <= 24 * 60:
        return error(400, "bad_minutes", "minutes must be a whole number from 1 to 1440")
    try:
        return JsonResponse(chart_series(name, minutes=minutes))
    except PrometheusUnavailable as exc:
        return error(503, "prometheus_unavailable", str(exc))


def alerts_json(request: HttpRequest) -> HttpResponse:
    try:
        return JsonResponse({"alerts": firing_alerts()})
    except PrometheusUnavailable as exc:
        return error(503, "prometheus_unavailable", str(exc))


@require_POST
def start_move(request: HttpRequest) -> HttpResponse:
    if not _can_operate(request):
        return error(403, "forbidden", f"starting a move needs the {OPERATE_PERMISSION} "
                                       "permission")
    raw = request.POST.get("tenant", "")
    tenant = (Tenant.objects.using(CONTROL_ALIAS).filter(pk=int(raw)).first()
              if raw.isdigit() else None)
    target = request.POST.get("target", "")
    if tenant is None or target not in get_shard_map().shard_names:
        messages.error(request, "choose a tenant and one of the shards")
    elif tenant.shard == target:
        messages.warning(request, f"{tenant.slug} is already on {target}: not moved")
    elif MoveJob.objects.using(CONTROL_ALIAS).filter(
            tenant=tenant, state__in=MoveJob.ACTIVE_STATES).exists():
        messages.warning(request, f"{tenant.slug} is already moving: abort or finish that first")
    else:
        _launch_with_message(
            request, [["move_tenant", str(tenant.pk), target, "--reason",
                       f"ops dashboard: {request.user.get_username()}"]],
            f"move-{tenant.slug}-{target}", f"moving {tenant.slug} to {target}")
    return redirect("ops-dashboard")


@require_POST
def abort_move(request: HttpRequest, job_id: int) -> HttpResponse:
    if not _can_operate(request):
        return error(403, "forbidden", f"aborting a move needs the {OPERATE_PERMISSION} "
                                       "permission")
    job = MoveJob.objects.using(CONTROL_ALIAS).select_related("tenant").filter(pk=job_id).first()
    if job is None or job.state not in MoveJob.ACTIVE_STATES:
        messages.warning(request, f"move {job_id} is not in progress: nothing to abort")
    else:
        _launch_with_message(request, [["move_tenant", str(job.tenant_id), "--abort"]],
                             f"abort-{job.tenant.slug}",
                             f"aborting move {job.pk} of {job.tenant.slug}", lock_free=False)
    return redirect("ops-dashboard")


def patroni_json(request: HttpRequest) -> JsonResponse:
    """Every Patroni-managed cluster: members, the last failovers, the switchover state."""
    running = switchover_runs.running(get_shard_map().source)
    return JsonResponse({"clusters": [cluster_view(c, running) for c in get_shard_map().clusters
                                      if c.patroni],
                         "can_operate": _can_operate(request)})


@require_POST
def start_switchover(request: HttpRequest) -> HttpResponse:
    """Start `manage.py switchover <cluster> [--to <member>]`; 202 with where its log is, or a
    4xx (5xx if Patroni does not answer) saying why not. Answers JSON: ops.js posts it."""
    if not _can_operate(request):
        return error(403, "forbidden", f"a switchover needs the {OPERATE_PERMISSION} permission")
    try:
        with switchover_runs.launching():
            wanted = check_request(
                get_shard_map(), request.POST.get("cluster", ""), request.POST.get("to", ""),
                members=lambda c: patroni.cluster_members(list(c.patroni)),
                running=switchover_runs.running(get_shard_map().source))
            pid, log = _launch(request, [wanted.command],
                               switchover_runs.log_name(wanted.cluster.name),
                               wanted.describe(), lock_free=False)
    except RefusedRequest as exc:
        return error(exc.status, exc.code, exc.message)
    except (LaunchRefused, OSError) as exc:  # OSError: no writable folder for its log
        return error(503, "not_started", str(exc))
    return JsonResponse({"cluster": wanted.cluster.name, "leader": wanted.leader,
                         "target": wanted.target, "pid": pid, "log": str(log),
                         "message": f"Started {wanted.describe()} (pid {pid}, log {log})."},
                        status=202)


class LaunchRefused(Exception):
    """A command the dashboard did not start; the message says why."""


def _launch(request: HttpRequest, commands: list[list[str]], log_name: str, what: str, *,
            lock_free: bool = True) -> tuple[int, Path]:
    """Start the commands detached (admin_moves.launch_commands); (pid, log). With
    `lock_free`, refuses while the cluster lock is held: a move would fail at once."""
    holder = current_holder() if lock_free else None
    if holder is not None:
        raise LaunchRefused(f"the cluster lock is held by {holder.describe()}: a move "
                            "would fail at once. Try again when it is free.")
    try:
        return launch_commands(commands, log_name=log_name,
                               reason=f"ops dashboard: {request.user.get_username()}")
    except OSError as exc:
        raise LaunchRefused(f"could not start {what}: {exc}") from None


def _launch_with_message(request: HttpRequest, commands: list[list[str]], log_name: str,
                         what: str, *, lock_free: bool = True) -> None:
    try:
        pid, log = _launch(request, commands, log_name, what, lock_free=lock_free)
    except LaunchRefused as exc:
        messages.error(request, str(exc))
        return
    messages.success(request, f"Started {what} in the background (pid {pid}, log {log}).")


def _staff(view: Any) -> Any:
    # The admin's own check: staff login (a redirect to the login page otherwise), CSRF.
    return admin.site.admin_view(view)


urlpatterns = [
    path("", _staff(ops_page), name="ops-dashboard"),
    path("moves.json", _staff(moves_json), name="ops-moves"),
    path("series.json", _staff(series_json), name="ops-series"),
    path("alerts.json", _staff(alerts_json), name="ops-alerts"),
    path("start/", _staff(start_move), name="ops-start-move"),
    path("abort/<int:job_id>/", _staff(abort_move), name="ops-abort-move"),
    path("patroni.json", _staff(patroni_json), name="ops-patroni"),
    path("switchover/", _staff(start_switchover), name="ops-switchover"),
]
