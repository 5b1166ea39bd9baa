"""Control-database models: the shard registry and the tenant directory."""

from __future__ import annotations

from collections.abc import Collection
from typing import Any, Self

from django.db import models

from shards.global_ids import NextGlobalId


class Shard(models.Model):
    """A shard known to the control database. Its servers come from the topology file; this row
    holds what must never change for it, above all its global id generator."""

    name = models.CharField(max_length=40, unique=True)
    generator_id = models.PositiveSmallIntegerField(unique=True)
    accepts_tenants = models.BooleanField(
        default=True, help_text="New tenants may be placed here."
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Tenant(models.Model):
    """Which shard holds a tenant's rows. Authoritative; read through the directory cache."""

    class State(models.TextChoices):
        ACTIVE = "active", "active"
        MOVING = "moving", "moving"

    id = models.BigIntegerField(primary_key=True, db_default=NextGlobalId(), editable=False)
    slug = models.SlugField(max_length=63, unique=True)
    shard = models.CharField(max_length=40, db_index=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.ACTIVE)
    # Bumped on every placement change; caches keyed by it can never serve an old placement.
    version = models.PositiveIntegerField(default=1)
    # WAL position (as an integer) that a replica of `shard` must have replayed before it may
    # serve this tenant: set when a move lands, so target replicas that lag the copy are skipped.
    min_lsn = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    # The placement as read from the database (None for a new row), so save() sees a hand edit.
    _loaded_shard: str | None

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return f"{self.slug} ({self.shard})"

    @classmethod
    def from_db(cls, db: str | None, field_names: Collection[str], values: Collection[Any],
                **kwargs: Any) -> Self:
        instance = super().from_db(db, field_names, values, **kwargs)
        instance._loaded_shard = instance.__dict__.get("shard")
        return instance

    def save(self, *args: Any, **kwargs: Any) -> None:
        # A placement edited by hand (admin, shell) must bump the version like a move does.
        loaded = getattr(self, "_loaded_shard", None)
        if loaded is not None and loaded != self.shard:
            self.version += 1
        super().save(*args, **kwargs)
        self._loaded_shard = self.shard


class MoveJob(models.Model):
    """One online move of a tenant between shards: a state machine that survives a crash of
    the command driving it (rerun `move_tenant` to resume, or `--abort`)."""

    class State(models.TextChoices):
        PENDING = "pending", "pending"
        COPYING = "copying", "copying"  # subscription created, initial copy running
        CATCHING_UP = "catching_up", "catching up"
        CUTOVER = "cutover", "cutover"  # fenced on the source, waiting to flip
        FLIPPED = "flipped", "flipped"  # directory points at the target
        CLEANUP = "cleanup", "cleanup"  # replication objects and source rows being removed
        DONE = "done", "done"
        ABORTED = "aborted", "aborted"
        FAILED = "failed", "failed"  # flipped, but verification found a difference
        # Flipped, but resumed after a crash and the copy could not be fully verified: the
        # source rows are kept (fenced) until an operator accepts (--accept-unverified).
        UNVERIFIED = "unverified", "unverified"

    ACTIVE_STATES = (State.PENDING, State.COPYING, State.CATCHING_UP, State.CUTOVER,
                     State.FLIPPED, State.CLEANUP, State.UNVERIFIED)

    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="moves")
    source = models.CharField(max_length=40)
    target = models.CharField(max_length=40)
    state = models.CharField(max_length=16, choices=State.choices, default=State.PENDING)
    reason = models.CharField(max_length=200, blank=True, default="",
                              help_text="Who asked: a person, the rebalancer, the admin.")
    rows_total = models.BigIntegerField(default=0)
    rows_copied = models.BigIntegerField(default=0)
    lag_bytes = models.BigIntegerField(default=0)
    write_pause_ms = models.FloatField(null=True, blank=True)
    flip_lsn = models.BigIntegerField(null=True, blank=True)
    # The target's transaction snapshot at the flip (pg_current_snapshot() text): a row of the
    # target whose xmin it sees was not written since, so a verification resumed after a crash
    # can still compare those rows with the frozen source.
    flip_snapshot = models.TextField(blank=True, default="")
    verified = models.BooleanField(null=True, blank=True)
    report = models.JSONField(default=dict, blank=True)
    error = models.TextField(blank=True, default="")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # At most one unfinished move per tenant.
            models.UniqueConstraint(
                fields=["tenant"],
                condition=models.Q(state__in=["pending", "copying", "catching_up", "cutover",
                                              "flipped", "cleanup", "unverified"]),
                name="shards_one_active_move_per_tenant",
            )
        ]

    def __str__(self) -> str:
        return f"move {self.tenant_id} {self.source}->{self.target} ({self.state})"

    @property
    def replication_name(self) -> str:
        """Publication, subscription and slot name on the shards for this job."""
        return f"shardsvc_move_{self.pk}"
