"""The service's URLconf plus the test-only diagnostics endpoints (tests/diagnostics.py).

A service started by the test harness selects it with SHARDSVC_URLCONF=tests.urls; nothing in
production imports tests/.
"""

from django.urls import path

from project.urls import urlpatterns as service_patterns
from tests import diagnostics

urlpatterns = [
    path("_diag/sleep", diagnostics.sleep),
    path("_diag/session", diagnostics.session),
    path("_diag/spin", diagnostics.spin),
    path("_diag/replicas", diagnostics.replicas),
    # The same view on both stacks (project/wsgi.py): the API's and the full one.
    path("_diag/middleware", diagnostics.middleware),
    path("api/_diag/middleware", diagnostics.middleware),
    # Under the production tenant path (settings.TENANT_PATH_PATTERN), so the tenant middleware
    # resolves these exactly as it resolves the API's. Django tries patterns in order: ahead of
    # the "api/" include, these are matched before django-ninja sees the path.
    path("api/sites/<str:tenant>/_diag/threads", diagnostics.threads),
    path("api/sites/<str:tenant>/_diag/threads/<int:thread_id>", diagnostics.thread),
    path("api/sites/<str:tenant>/_diag/where", diagnostics.where),
    *service_patterns,
]
