"""Where a new tenant goes. The policy is pluggable (``SHARDSVC["PLACEMENT_POLICY"]``, a dotted
path to a callable taking the candidate shard names and their tenant counts); the default puts it
on the least loaded shard."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from django.db.models import Count
from django.utils.module_loading import import_string

from shards.aliases import CONTROL_ALIAS
from shards.runtime import runtime
from shards.topology import get_shard_map

Policy = Callable[[Sequence[str], Mapping[str, int]], str]


class NoShardAcceptsTenants(LookupError):
    pass


def least_loaded(candidates: Sequence[str], tenant_counts: Mapping[str, int]) -> str:
    """Fewest tenants wins; ties go to the shard listed first in the topology file."""
    return min(candidates, key=lambda name: (tenant_counts.get(name, 0), candidates.index(name)))


def candidate_shards() -> list[str]:
    """Shards in the topology that the registry does not close to new tenants."""
    # Models: this module is imported while the apps load (shards.apps -> directory), before
    # models can be.
    from shards.models import Shard

    closed = set(
        Shard.objects.using(CONTROL_ALIAS).filter(accepts_tenants=False)
        .values_list("name", flat=True)
    )
    names = [name for name in get_shard_map().shard_names if name not in closed]
    if not names:
        raise NoShardAcceptsTenants(
            "every shard is closed to new tenants: open one (Shard.accepts_tenants) or add a shard"
        )
    return names


def tenant_counts() -> dict[str, int]:
    # Models: this module is imported while the apps load (shards.apps -> directory), before
    # models can be.
    from shards.models import Tenant

    rows = Tenant.objects.values("shard").annotate(n=Count("id")).order_by()
    return {row["shard"]: row["n"] for row in rows}


def choose_shard() -> str:
    policy: Policy = import_string(runtime.conf().placement_policy)
    candidates = candidate_shards()
    choice = policy(candidates, tenant_counts())
    if choice not in candidates:
        raise ValueError(f"placement policy returned {choice!r}, not one of {candidates}")
    return choice
