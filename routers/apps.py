from typing import Any

from django.apps import AppConfig
from django.db.backends.signals import connection_created

from routers import replicas, writes
from shards.signals import replica_read_failed


def _mark_replica_failed(sender: Any, *, alias: str, error: Exception, **kwargs: Any) -> None:
    replicas.get_replica_health().mark_failed(alias, str(error))


class RoutersConfig(AppConfig):
    """Request routing: the database router, causal tokens, replica health. No models; an app so
    that it wires itself to the data layer's signals below it (the data layer never imports it)."""

    name = "routers"
    label = "routers"
    verbose_name = "Request routing"

    def ready(self) -> None:
        connection_created.connect(writes.install, dispatch_uid="shardsvc.track_writes")
        replica_read_failed.connect(_mark_replica_failed,
                                    dispatch_uid="shardsvc.replica_read_failed")
