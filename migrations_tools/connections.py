"""Direct, unpooled Django connections for migration work, one per thread.

The service's DATABASES go through PgBouncer in transaction pooling mode, where session state
(`SET`, advisory locks, `SET ROLE`) leaks to other clients. Migrations need a session of their
own: their timeouts are session settings, and a migration's statements must not be spread over
several server connections. So the DBA tools never use the configured aliases as they are:
`direct_connections()` puts, for the current thread only, a plain Django PostgreSQL connection
built from the topology's `direct_dsn` in place of the alias in `django.db.connections`. Code
that migrations run (operations, `pre_migrate`/`post_migrate` handlers such as the shard registry)
keeps using `connections[alias]` and gets the direct session, whatever SHARDSVC_DIRECT_DB says.

Migrations run as the application's role (the pooled DSN's user, via Django's `assume_role`)
when the direct DSN logs in as someone else (typically a superuser): the tables they create must
belong to the role the application queries them with.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from django.db import DEFAULT_DB_ALIAS, connections
from django.db.backends.base.base import BaseDatabaseWrapper
from django.db.utils import load_backend
from psycopg.conninfo import conninfo_to_dict

from migrations_tools.safety import ExecutionPolicy
from shards.topology import databases_setting, get_shard_map

ENGINE = "django.db.backends.postgresql"
APPLICATION_NAME = "shardsvc migrate_shards"


def direct_settings(alias: str, *, policy: ExecutionPolicy | None = None,
                    application_name: str = APPLICATION_NAME) -> dict[str, Any]:
    """A complete DATABASES entry reaching `alias` over its direct DSN, with the policy's
    timeouts as session startup options."""
    shard_map = get_shard_map()
    server = shard_map.server(alias)
    options: dict[str, Any] = {"connect_timeout": 5, "application_name": application_name}
    if policy is not None:
        options["options"] = policy.startup_options()
    pooled_user = conninfo_to_dict(server.dsn).get("user")
    direct_user = conninfo_to_dict(server.direct_dsn).get("user")
    if pooled_user and pooled_user != direct_user:
        options["assume_role"] = pooled_user
    # The two entries needed, not the whole fleet's: this runs for every connection a
    # migration opens, and parsing every server's DSN each time was a share of a shard's CPU.
    entries = databases_setting(shard_map, engine=ENGINE, options=options, use_direct=True,
                                only=(DEFAULT_DB_ALIAS, alias))
    # configure_settings fills Django's defaults (AUTOCOMMIT, TIME_ZONE, TEST, ...) and insists
    # on a `default` entry, so configure the pair and keep ours.
    configured = connections.configure_settings(
        {DEFAULT_DB_ALIAS: entries[DEFAULT_DB_ALIAS], alias: entries[alias]}
    )
    return configured[alias]


def open_direct(alias: str, *, policy: ExecutionPolicy | None = None,
                application_name: str = APPLICATION_NAME) -> BaseDatabaseWrapper:
    """A new, not yet connected Django connection to `alias` over its direct DSN."""
    entry = direct_settings(alias, policy=policy, application_name=application_name)
    wrapper: BaseDatabaseWrapper = load_backend(ENGINE).DatabaseWrapper(entry, alias)
    return wrapper


@contextmanager
def direct_connections(*aliases: str, policy: ExecutionPolicy | None = None,
                       application_name: str = APPLICATION_NAME
                       ) -> Iterator[dict[str, BaseDatabaseWrapper]]:
    """Within the block, `connections[alias]` in this thread is a direct connection for each
    alias; on exit each is closed and the previous object put back."""
    with ExitStack() as stack:
        opened: dict[str, BaseDatabaseWrapper] = {}
        for alias in dict.fromkeys(aliases):  # keep order, drop duplicates
            opened[alias] = stack.enter_context(
                _replaced(alias, policy=policy, application_name=application_name)
            )
        yield opened


@contextmanager
def _replaced(alias: str, *, policy: ExecutionPolicy | None,
              application_name: str) -> Iterator[BaseDatabaseWrapper]:
    # Reading connections[alias] only builds the wrapper object; it does not connect.
    previous = connections[alias]
    wrapper = open_direct(alias, policy=policy, application_name=application_name)
    connections[alias] = wrapper
    try:
        yield wrapper
    finally:
        try:
            wrapper.close()
        finally:
            connections[alias] = previous
