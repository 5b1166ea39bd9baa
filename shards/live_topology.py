"""Following the topology file while the service runs: a new shard, a replica added or removed,
a DSN changed, all without restarting a worker.

Each worker's replica health checker (a native thread, `routers.replica_checker`) calls
`TopologyFollower.poll()` after each round; at most once a second it compares the file's
stat (and, when that moved, its SHA-256) with what the worker runs on. A changed file is loaded
and checked as at start (`load_shard_map`), then applied in an order that never lets the router
name a database the rest of the process does not know yet:

1. Django's connection handler learns the new aliases (``settings.DATABASES`` and
   ``connections.settings``: each request's greenlet builds its wrappers from them);
2. the listeners (replica health) move to the new map;
3. the runtime registry serves the new map (``get_shard_map()``), which the router reads.

A file that fails to load, or removes a shard or changes the control database or Redis (which
need a restart and, for a shard, moving its tenants away first), is logged once and ignored:
the worker keeps serving on the map it has.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import DEFAULT_DB_ALIAS, connections

from shards.shardmap import Server, ShardMap
from shards.topology import (
    database_like,
    get_shard_map,
    load_shard_map,
    replace_shard_map,
    role_options_of,
)

logger = logging.getLogger("shardsvc.topology")

Listener = Callable[[ShardMap], None]


class TopologyFollower:
    """Polls one worker's topology file and applies a changed one (see the module docstring)."""

    def __init__(self, path: Path, *, interval: float = 1.0,
                 listeners: tuple[Listener, ...] = ()) -> None:
        self.path = Path(path)
        self.interval = interval
        self.listeners = list(listeners)
        self._next_poll = 0.0
        # Unknown at first: the first poll loads the file and applies it only if it differs
        # from the map the process runs on (it may have changed since settings read it).
        self._stat: tuple[int, int, int] | None = None
        self._digest: str | None = None

    def poll(self, *, force: bool = False) -> bool:
        """Apply the file if it changed since the last poll; True when a new map was applied.
        Never raises: a bad file is logged and the current map kept. One caller at a time (the
        checker's thread, or a test)."""
        now = time.monotonic()
        if not force and now < self._next_poll:
            return False
        try:
            self._next_poll = now + self.interval
            stat = _stat(self.path)
            if stat == self._stat and not force:
                return False  # the common case: one stat() a second
            self._stat = stat
            digest = _digest(self.path)
            if digest == self._digest or digest is None:
                return False  # touched, not changed (or gone: keep serving)
            self._digest = digest
            return self._load_and_apply()
        except Exception:  # a poll must never stop the checker's thread
            logger.exception("following the topology file %s failed", self.path)
            return False

    def _load_and_apply(self) -> bool:
        try:
            new = load_shard_map(self.path)
            if same_servers(new, get_shard_map()):
                return False
            check_live_change(get_shard_map(), new)
        except ImproperlyConfigured as exc:
            logger.error("topology file changed but not applied (still serving on the old "
                         "map): %s", exc)
            return False
        apply_shard_map(new, self.listeners)
        return True


def same_servers(one: ShardMap, other: ShardMap) -> bool:
    """The two maps name the same servers the same way (wherever their files are)."""
    return (one.control, one.shards, one.redis_url) == (other.control, other.shards,
                                                         other.redis_url)


def check_live_change(old: ShardMap, new: ShardMap) -> None:
    """Refuse what a running worker cannot take: a shard removed (its tenants would have no
    database), another control database or Redis (caches and the directory live there)."""
    gone = sorted(set(old.shard_names) - set(new.shard_names))
    if gone:
        raise ImproperlyConfigured(
            f"Topology file {new.source}: shard(s) {', '.join(gone)} removed. Fix: move their "
            "tenants away and restart the service; shards are not removed live")
    if old.control.primary.dsn != new.control.primary.dsn or old.redis_url != new.redis_url:
        raise ImproperlyConfigured(
            f"Topology file {new.source}: the control database's DSN or Redis changed. Fix: "
            "restart the service for those")


def apply_shard_map(new: ShardMap, listeners: list[Listener] | tuple[Listener, ...] = ()) -> None:
    """Make `new` this process's shard map (see the module docstring for the order)."""
    old = get_shard_map()
    register_databases(new)
    for listener in listeners:
        listener(new)
    replace_shard_map(new)
    if isinstance(getattr(settings, "SHARDSVC", None), dict):
        settings.SHARDSVC["SHARD_MAP"] = new  # what a registry reset rebuilds from
    added = sorted({s.alias for s in new.servers()} - {s.alias for s in old.servers()})
    removed = sorted({s.alias for s in old.servers()} - {s.alias for s in new.servers()})
    logger.warning("topology file %s applied: %d shard(s); added %s; removed %s", new.source,
                   len(new.shards), ", ".join(added) or "nothing", ", ".join(removed) or "nothing")


def register_databases(new: ShardMap) -> None:
    """Django's database settings for every server of `new` that is new or whose DSN changed,
    built like the existing ones (same engine, pool and timeout options, and those of the
    server's role). Entries of removed servers stay: a request that chose one just before the
    change still finishes on it."""
    databases: dict[str, Any] = settings.DATABASES
    template = databases[DEFAULT_DB_ALIAS]
    direct = bool(getattr(settings, "DIRECT_DB", False))
    by_role = getattr(settings, "DATABASE_ROLE_OPTIONS", None)
    entries = {}
    for server in new.servers():
        entry = database_like(template, _dsn(server, direct))
        entry["OPTIONS"].update(role_options_of(by_role, server))
        current = databases.get(server.alias)
        if current is None or _target(current) != _target(entry):
            entries[server.alias] = entry
    if not entries:
        return
    configured = connections.configure_settings(
        {DEFAULT_DB_ALIAS: copy.deepcopy(template), **entries})
    for alias in entries:
        databases[alias] = configured[alias]
        if connections.settings is not databases:
            connections.settings[alias] = configured[alias]


def _dsn(server: Server, direct: bool) -> str:
    return server.direct_dsn if direct else server.dsn


def _target(entry: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(entry.get(key) for key in ("NAME", "USER", "PASSWORD", "HOST", "PORT"))


def _stat(path: Path) -> tuple[int, int, int] | None:
    try:
        found = os.stat(path)
    except OSError:
        return None
    return (found.st_mtime_ns, found.st_size, found.st_ino)


def _digest(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
