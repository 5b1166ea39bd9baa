from django.contrib import admin
from django.contrib.auth.signals import user_login_failed
from django.urls import include, path

from migrations_tools import ops_dashboard
from project import health, metrics_endpoint
from project.api import api
from sites import throttle

urlpatterns = [
    # First: URL resolution tries these in order, and nearly every request is the API's (no
    # other pattern starts with "api/").
    path("api/", api.urls),
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("readyz/shards", health.shard_health, name="readyz-shards"),
    path("metrics", metrics_endpoint.metrics_view, name="metrics"),
    # Before admin.site.urls, so this wrapper answers the admin's login URL.
    path("admin/login/", throttle.throttled_login(admin.site.login)),
    # The ops dashboard, in the admin's look and behind its login (migrations_tools).
    path("admin/ops/", include(ops_dashboard.urlpatterns)),
    path("admin/", admin.site.urls),
]

user_login_failed.connect(throttle.count_failed_login, dispatch_uid="shardsvc.throttle.login")
