"""Errors raised by the ``project.pgpool`` database backend.

Pool exhaustion subclasses Django's ``OperationalError`` so that code which already handles a
database outage (retry, 503) handles a full pool the same way. Bad settings are reported as
Django's ``ImproperlyConfigured`` (see ``project.pgpool.options``), not as a class of their own.
"""

from __future__ import annotations

from django.db.utils import OperationalError


class PoolTimeout(OperationalError):
    """No connection of a full pool came free within ``OPTIONS["POOL_TIMEOUT"]`` seconds."""


def pool_timeout(name: str, max_size: int, timeout: float) -> PoolTimeout:
    """Build the exhaustion error with a message that states the fix."""
    return PoolTimeout(
        f"database pool for {name!r} exhausted: all {max_size} connections stayed busy for "
        f"{timeout} s; raise MAX_CONNS or POOL_TIMEOUT, or lower the number of concurrent "
        f"requests per worker"
    )


class DeadlineExceeded(OperationalError):
    """The current request's deadline passed (``project.pgpool.deadline``)."""


class CommitOutcomeUnknown(OperationalError):
    """The connection was lost after a COMMIT (or an autocommit write) was sent: the write may
    or may not have been applied, so it must not be run again blindly."""

    def __init__(self, alias: str) -> None:
        super().__init__(
            f"the connection to {alias} was lost while a write was being committed: it may or "
            "may not have been saved. Read it back before retrying"
        )
        self.alias = alias
