from django.conf import settings
from django.contrib import admin
from django.contrib.auth.signals import user_login_failed
from django.urls import path

from project import diagnostics, health, metrics, throttle
from project.api import api

urlpatterns = [
    path("healthz", health.healthz, name="healthz"),
    path("readyz", health.readyz, name="readyz"),
    path("metrics", metrics.metrics_view, name="metrics"),
    # Before admin.site.urls, so this wrapper answers the admin's login URL.
    path("admin/login/", throttle.throttled_login(admin.site.login)),
    path("admin/", admin.site.urls),
    path("api/", api.urls),
]

user_login_failed.connect(throttle.count_failed_login, dispatch_uid="shardsvc.throttle.login")

if settings.DIAGNOSTICS_ENABLED:
    urlpatterns += [
        path("_diag/sleep", diagnostics.sleep),
        path("_diag/session", diagnostics.session),
        path("_diag/plain/<str:alias>/threads/<int:thread_id>", diagnostics.thread_plain),
        path("_diag/plain/<str:alias>/sites/<int:tenant_id>/threads/<int:thread_id>/comments",
             diagnostics.comments_plain),
        path("t/<str:tenant>/_diag/threads", diagnostics.threads),
        path("t/<str:tenant>/_diag/threads/<int:thread_id>", diagnostics.thread),
        path("t/<str:tenant>/_diag/where", diagnostics.where),
    ]
