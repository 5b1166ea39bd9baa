"""Routing errors. Each says what went wrong and how to fix it."""

from __future__ import annotations


class RoutingError(RuntimeError):
    """Base class: a query could not be routed to exactly one database."""


class NoTenantContext(RoutingError):
    """A sharded model was queried or saved with no current tenant."""

    def __init__(self, model_label: str) -> None:
        super().__init__(
            f"{model_label} is sharded and there is no current tenant: wrap the code in "
            "`with tenant(...)` (routers.context), send the request with a tenant, or use the "
            "model's `unscoped` manager with an explicit `.using(alias)` for fan-out work"
        )


class WrongTenant(RoutingError):
    """A row of one tenant was saved or related while another tenant is current."""


class CrossShardRelation(RoutingError):
    """Objects on two different shards were related; relations never cross shards."""
