"""Starting a tenant move: its settings and its job row (new, or the unfinished one to resume).

`migrations_tools.moves.Mover` then runs the job through its states.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from shards.aliases import CONTROL_ALIAS
from shards.directory import lookup, set_placement
from shards.models import MoveJob, Shard, Tenant
from shards.topology import get_shard_map


class MoveError(RuntimeError):
    """A move cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class MoveSettings:
    grace_seconds: float = 2.0  # source rows are kept (fenced) this long after the flip
    cutover_timeout: float = 10.0  # fenced longer than this: give up, unfence, retry later
    # A cutover that gave up (unfenced, back to catching up) is tried again this many times in
    # all, this long apart, before the command fails and leaves the job for a rerun.
    cutover_attempts: int = 3
    cutover_retry_pause: float = 2.0
    # The fence expires by itself after this long if the mover dies before the flip; the
    # mover only flips well inside it (cutover_timeout is much shorter).
    fence_lease: float = 60.0
    catchup_lag_bytes: int = 1 << 20  # cut over once the target is this close
    copy_timeout: float = 3600.0
    delete_batch: int = 5000
    delete_pause: float = 0.01  # between batches: leave the source room for its other tenants
    poll: float = 0.05
    # Finish a move left "unverified" (resumed after the flip, copy not provable): delete
    # the kept source rows anyway. Only an operator who inspected them sets it.
    accept_unverified: bool = False
    # Continuous verification before the cutover (migrations_tools.verify_ranges): how long it
    # may run once caught up (0: off), into how many id ranges it cuts the tenant's settled
    # rows, and how old an id must be for its range to count as settled.
    continuous_verify_seconds: float = 60.0
    continuous_ranges: int = 16
    settle_seconds: float = 5.0
    # A shard that fails over mid-move (migrations_tools.move_failover): how long to wait for
    # its new leader, and how many failovers one command restarts the copy for.
    failover_wait: float = 45.0
    failover_restarts: int = 3


def start_move(tenant_key: str | int, target: str, *, reason: str = "") -> MoveJob:
    """The job for moving a tenant to `target`: a new one, or the unfinished one to resume."""
    shard_map = get_shard_map()
    if target not in shard_map.shard_names:
        raise MoveError(f"unknown shard {target!r}; known shards: "
                        f"{', '.join(shard_map.shard_names)}")
    entry = lookup(tenant_key)
    active = MoveJob.objects.using(CONTROL_ALIAS).filter(
        tenant_id=entry.id, state__in=MoveJob.ACTIVE_STATES).first()
    if active is not None:
        if active.target != target:
            raise MoveError(f"tenant {entry.slug} is already moving to {active.target} (job "
                            f"{active.pk}, {active.state}): finish it or abort it first")
        return active
    if Shard.objects.using(CONTROL_ALIAS).filter(name=target, accepts_tenants=False).exists():
        raise MoveError(f"shard {target} is closed to new tenants (Shard.accepts_tenants); "
                        "open it in the admin first")
    tenant_row = Tenant.objects.using(CONTROL_ALIAS).get(id=entry.id)
    if tenant_row.shard == target:
        raise MoveError(f"tenant {entry.slug} is already on {target}")
    with transaction.atomic(using=CONTROL_ALIAS):
        job = MoveJob.objects.using(CONTROL_ALIAS).create(
            tenant_id=entry.id, source=tenant_row.shard, target=target, reason=reason)
        set_placement(entry.id, tenant_row.shard, state=Tenant.State.MOVING)
    return job
