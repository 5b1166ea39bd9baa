"""Errors of the DBA tools.

The lock errors derive from CommandError so that any management command taking the cluster lock
(migrate_shards today, tenant moves later) prints the message and exits 1 without a traceback;
library callers catch them by their own class.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.core.management.base import CommandError

if TYPE_CHECKING:
    from migrations_tools.lock import LockHolder


class ClusterLockHeld(CommandError):
    """Another process holds the cluster-wide lock: it migrates or moves a tenant."""

    def __init__(self, purpose: str, holder: LockHolder | None) -> None:
        self.holder = holder
        if holder is None:
            who = "another session (it released the lock while we looked: try again)"
        else:
            who = holder.describe()
        super().__init__(
            f"cannot take the cluster lock for {purpose!r}: it is held by {who}. Migrations and "
            "tenant moves never overlap: wait for it to finish (or pass --lock-wait). A process "
            "that died released the lock with its connection; a stuck one can be stopped, or "
            "its session ended with SELECT pg_terminate_backend(<backend pid>) on the control "
            "primary."
        )


class ClusterLockLost(CommandError):
    """The session holding the cluster lock ended (control restarted, network cut)."""


class MigrationFailed(Exception):
    """One migration of one database failed, after any retries."""

    def __init__(self, migration: str, message: str, *, attempts: int = 1) -> None:
        self.migration = migration
        self.attempts = attempts
        super().__init__(f"{migration}: {message}")
