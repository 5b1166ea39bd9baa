from django.apps import AppConfig
from django.db.backends.signals import connection_created

from routers import writes


class RoutersConfig(AppConfig):
    """Request routing: the database router, causal tokens, replica health. No models; an app so
    that it installs its write tracker on the connections the data layer makes (the data layer
    never imports it)."""

    name = "routers"
    label = "routers"
    verbose_name = "Request routing"

    def ready(self) -> None:
        connection_created.connect(writes.install, dispatch_uid="shardsvc.track_writes")
