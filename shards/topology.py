"""The topology: an immutable ShardMap for the process and Django's DATABASES from it.

One TOML file names the control database and every shard, each with a pooled DSN (through
PgBouncer, for the app) and a direct DSN (for DDL and replication), plus their replicas. Settings
call ``load_shard_map()`` (``shards.topology_file``) once and ``databases_setting()`` on the
result; nothing else reads the file. Everyone else asks ``get_shard_map()``, which returns
``settings.SHARDSVC["SHARD_MAP"]`` (a ``shards.shardmap.ShardMap``).
"""

from __future__ import annotations

import copy
from collections.abc import Collection, Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from psycopg.conninfo import conninfo_to_dict

from shards.runtime import Conf, Slot, runtime
from shards.shardmap import Cluster, Role, Server, ShardMap
from shards.topology_file import load_shard_map

# The map's types and the file's loader live in their own modules; this is where callers find
# them next to the settings helpers and the process-wide accessor.
__all__ = [
    "Cluster",
    "RoleOptions",
    "Server",
    "ShardMap",
    "database_like",
    "databases_setting",
    "get_shard_map",
    "load_shard_map",
    "replace_shard_map",
    "role_options_of",
]

# Per role, OPTIONS that differ from the common ones (settings.DATABASE_ROLE_OPTIONS).
RoleOptions = Mapping[Role, Mapping[str, Any]]


# --- Django settings -------------------------------------------------------------------------


def databases_setting(
    shard_map: ShardMap,
    *,
    engine: str = "project.pgpool",
    options: dict[str, Any] | None = None,
    role_options: RoleOptions | None = None,
    use_direct: bool = False,
    only: Collection[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Django ``DATABASES``: one entry per alias (or per alias in `only`), from the pooled DSNs
    (or the direct ones); each gets `options`, then what `role_options` gives its role."""
    return {
        server.alias: _database(server.direct_dsn if use_direct else server.dsn, engine,
                                {**(options or {}), **role_options_of(role_options, server)})
        for server in shard_map.servers() if only is None or server.alias in only
    }


def role_options_of(role_options: RoleOptions | None, server: Server) -> dict[str, Any]:
    """What `role_options` sets for `server`'s role (a copy)."""
    return dict((role_options or {}).get(server.role, {}))


def database_like(template: dict[str, Any], dsn: str) -> dict[str, Any]:
    """A ``DATABASES`` entry for `dsn` made like `template` (an existing entry): same engine,
    options and flags, another server (used when the topology changes live)."""
    entry = copy.deepcopy(template)
    made = _database(dsn, template["ENGINE"], None)
    for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT", "TEST"):
        entry[key] = made[key]
    # Conninfo keys of the new DSN (sslmode, ...) reach psycopg too; the template's own
    # conninfo keys stay unless the DSN sets them.
    entry["OPTIONS"] = {**entry.get("OPTIONS", {}), **made["OPTIONS"]}
    return entry


def _database(dsn: str, engine: str, options: dict[str, Any] | None) -> dict[str, Any]:
    params = conninfo_to_dict(dsn)
    name = params.pop("dbname")
    user, password = params.pop("user", ""), params.pop("password", "")
    host, port = params.pop("host", ""), params.pop("port", "")
    # Any other conninfo key (sslmode, connect_timeout, ...) still reaches psycopg through
    # OPTIONS; the caller's options win. Each alias gets its own deep copy to mutate freely.
    return {
        "ENGINE": engine,
        "NAME": name,
        "USER": user,
        "PASSWORD": password,
        "HOST": host,
        "PORT": str(port),
        "CONN_MAX_AGE": 0,
        "CONN_HEALTH_CHECKS": False,
        "ATOMIC_REQUESTS": False,
        "OPTIONS": {**params, **copy.deepcopy(options or {})},
        "TEST": {"NAME": name},
    }


# --- process-wide accessor -------------------------------------------------------------------


def _build_shard_map(conf: Conf) -> ShardMap:
    shard_map = conf.shard_map
    if not isinstance(shard_map, ShardMap):
        raise ImproperlyConfigured(
            f'settings.SHARDSVC["SHARD_MAP"] is {type(shard_map).__name__}, not a ShardMap. '
            'Fix: set SHARDSVC = {"SHARD_MAP": shards.topology.load_shard_map(<topology file>), '
            "...} in settings."
        )
    return shard_map


_shard_map: Slot[ShardMap] = runtime.slot("shard_map", _build_shard_map)


def get_shard_map() -> ShardMap:
    """The ShardMap of ``settings.SHARDSVC["SHARD_MAP"]``, read once per process (until the
    registry resets: shards.runtime), or the one the topology file changed to since
    (shards.live_topology)."""
    return _shard_map.get()


def replace_shard_map(new: ShardMap) -> None:
    """Serve `new` from now on (shards.live_topology applies a changed file with it)."""
    _shard_map.replace(new)
