from django.urls import path

from tests.benchmarks.plain_django import views

urlpatterns = [
    path("sites/<int:tenant_id>/threads/<int:thread_id>", views.thread),
    path("sites/<int:tenant_id>/threads/<int:thread_id>/comments", views.comments),
]
