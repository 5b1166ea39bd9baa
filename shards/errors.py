"""Errors raised by the shards package.

Each subclasses the standard error a caller would already catch, and its message states the fix.
A bad topology file is reported as Django's ``ImproperlyConfigured`` (see ``shards.topology``),
not as a class of its own: it is a settings problem and Django callers already expect that type.
"""

from __future__ import annotations


class UnknownShard(LookupError):
    """A shard name that the topology file does not define.

    The message names the topology file for operators; `public_message` leaves it out, for
    answers to API clients (a file path tells an outsider about the deployment)."""

    def __init__(self, message: str, *, name: str = "", known: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.name = name
        self.known = known

    @property
    def public_message(self) -> str:
        if not self.name:
            return "unknown shard"
        return f"unknown shard {self.name!r}; known shards: {', '.join(self.known)}"


class UnknownAlias(LookupError):
    """A database alias that no server in the topology file derives."""


class UnknownTenant(LookupError):
    """No tenant with that slug or id exists in the directory."""

    def __init__(self, key: str | int) -> None:
        super().__init__(f"no tenant {key!r} in the directory")
        self.key = key


class MalformedTenantKey(ValueError):
    """A tenant slug or id that cannot name any tenant (caught before any lookup)."""


class RoutingError(RuntimeError):
    """Base class: a query could not be routed to exactly one database."""


class NoTenantContext(RoutingError):
    """A sharded model was queried or saved with no current tenant."""

    def __init__(self, model_label: str) -> None:
        super().__init__(
            f"{model_label} is sharded and there is no current tenant: wrap the code in "
            "`with tenant(...)` (shards.tenancy), send the request with a tenant, or use the "
            "model's `unscoped` manager with an explicit `.using(alias)` for fan-out work"
        )


class WrongTenant(RoutingError):
    """A row of one tenant was saved or related while another tenant is current."""


class CrossShardRelation(RoutingError):
    """Objects on two different shards were related; relations never cross shards."""
