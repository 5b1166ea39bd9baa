"""The runtime registry: every tunable of the service and the per-process objects built from them.

Modelled on Django's ``BaseConnectionHandler`` (``django/utils/connection.py``): one settings
entry, ``settings.SHARDSVC``, read lazily and completed with the defaults of `Conf`, the one
place a default is written; objects built from it on first use; one reset, run when
``override_settings`` changes the entry (Django's ``setting_changed``).

    SHARDSVC = {"SHARD_MAP": load_shard_map(path), "SHARDED_APPS": ["comments"],
                **environ_overrides(os.environ)}        # in settings: only what differs

    runtime.conf().fence_retry_seconds                  # 10.0 unless set
    with runtime.injected("replica_health", fake): ...  # tests hand the router a fake

Each object is declared where its class lives, as a `Slot` of this registry, so this module
imports nothing of the packages it serves:

    shard map       shards.topology.get_shard_map()      ("shard_map")
    tenant directory shards.directory.get_directory()    ("directory")
    Redis breaker   shards.redisguard.get_breaker()      ("redis_breaker")
    site-key cache  sites.keys (a `TtlCache`)            ("site_keys")
    replica health  `replica_health()` below             ("replica_health")

Replica health is the one object a lower layer needs (a sharded read that fails marks its
replica failed) but a higher one defines (``routers``): its slot is declared here and built by
the factory named in ``REPLICA_HEALTH_FACTORY``, imported on first use.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar, cast

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

SETTINGS_NAME = "SHARDSVC"

T = TypeVar("T")


def _tunable(default: Any, *, env: bool = False) -> Any:
    # `env`: settings take it from SHARDSVC_<NAME> too (environ_overrides).
    return field(default=default, metadata={"env": env})


@dataclass(frozen=True)
class Conf:
    """What ``settings.SHARDSVC`` holds (keys are these names in capitals), with every default.

    Seconds are floats, counts ints; all must be positive.
    """

    # The topology (shards.topology.ShardMap); settings load it from the topology file.
    shard_map: Any = None
    # Apps whose models live on the shards (ShardedModel); every other app lives on `default`.
    sharded_apps: tuple[str, ...] = ()
    # Dotted path to the placement policy of new tenants (shards.placement).
    placement_policy: str = "shards.placement.least_loaded"
    # Dotted path to a callable (Conf) -> replica health source; see the module docstring.
    replica_health_factory: str = "routers.replicas.build_replica_health"
    # Replicas lagging more than this are skipped; checked every replica_check_interval.
    replica_max_lag: float = _tunable(5.0, env=True)
    replica_check_interval: float = _tunable(0.5, env=True)
    # Tenant directory caches: per worker, and in Redis.
    directory_local_ttl: float = _tunable(1.0, env=True)
    directory_redis_ttl: int = _tunable(30, env=True)
    # A write that hits a moving tenant's fence retries this long for the move to flip.
    fence_retry_seconds: float = _tunable(10.0, env=True)
    # A write whose shard primary is read-only or unreachable (a failover: Patroni promotes in
    # about 2-5 s, then PgBouncer is re-pointed) retries this long, then answers 503. Below the
    # request deadline (10 s), so the client hears why rather than of the deadline.
    failover_hold_seconds: float = _tunable(6.0, env=True)
    # After this many consecutive Redis failures a worker skips Redis for redis_breaker_reset.
    redis_breaker_failures: int = _tunable(3, env=True)
    redis_breaker_reset: float = _tunable(1.0, env=True)
    # Site API keys: per worker, and in Redis (sites.keys). A rotated key works this long.
    key_cache_seconds: float = 10.0
    key_redis_seconds: int = 300

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            value = getattr(self, spec.name)
            if spec.type in ("float", "int"):
                _check_positive(spec.name.upper(), value, integer=spec.type == "int")
        if not isinstance(self.sharded_apps, tuple):
            object.__setattr__(self, "sharded_apps", tuple(self.sharded_apps))

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any]) -> Conf:
        """A Conf from a ``SHARDSVC`` mapping; unknown keys are refused, naming the known."""
        if not isinstance(entry, Mapping):
            raise ImproperlyConfigured(
                f"settings.{SETTINGS_NAME} must be a dict, got {type(entry).__name__}")
        known = {spec.name.upper(): spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(entry) - set(known))
        if unknown:
            raise ImproperlyConfigured(
                f"settings.{SETTINGS_NAME} has unknown keys {', '.join(unknown)}: the known keys "
                f"are {', '.join(sorted(known))}")
        return cls(**{known[key]: value for key, value in entry.items()})


def _check_positive(name: str, value: object, *, integer: bool) -> None:
    kind = int if integer else (int, float)
    if (isinstance(value, bool) or not isinstance(value, kind)
            or not math.isfinite(value) or value <= 0):
        what = "a positive whole number" if integer else "a positive number of seconds"
        raise ImproperlyConfigured(f"{SETTINGS_NAME}[{name!r}] must be {what}, got {value!r}")


def environ_names() -> dict[str, str]:
    """``SHARDSVC`` key -> the environment variable settings read it from."""
    return {spec.name.upper(): f"SHARDSVC_{spec.name.upper()}"
            for spec in dataclasses.fields(Conf) if spec.metadata.get("env")}


def environ_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """The tunables set in `environ` (SHARDSVC_REPLICA_MAX_LAG=2 ...), parsed and checked, as
    ``SHARDSVC`` entries; what is not set is left to the defaults of `Conf`."""
    types = {spec.name.upper(): spec.type for spec in dataclasses.fields(Conf)}
    found: dict[str, Any] = {}
    for key, variable in environ_names().items():
        raw = environ.get(variable)
        if raw is None:
            continue
        try:
            number = float(raw)
        except ValueError:
            raise ImproperlyConfigured(f"{variable}={raw!r} is not a number") from None
        if not math.isfinite(number) or number <= 0:
            raise ImproperlyConfigured(f"{variable} must be positive, got {raw!r}")
        found[key] = int(number) if types[key] == "int" else number
    Conf.from_entry(found)  # whole numbers of at least 1: 0.5 for a count fails here, at start
    return found


class ReplicaHealthSource(Protocol):
    """What the rest of the service asks of replica health; the router reads only this."""

    def usable_replicas(self, cluster: str, *, min_lsn: int = 0) -> list[str]: ...

    def mark_failed(self, alias: str, error: str) -> None: ...

    def out_of_reach(self, cluster: str, position: int) -> bool:
        """No usable replica has replayed `position` and the primary is not answering."""

    def states(self) -> Mapping[str, Any]: ...

    def check_once(self) -> None:
        """Refresh every replica's state now (returns within a bounded time, never raises)."""


class ManagedReplicaHealth(ReplicaHealthSource, Protocol):
    """A replica health source that runs its own background checks (what the factory builds)."""

    @property
    def running(self) -> bool: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


_EMPTY: Any = object()


class Slot(Generic[T]):
    """One lazily built object of the registry. `get()` builds it from the Conf on first use
    (once per process, also when many greenlets ask at once), or returns what a test injected.

    `ready`/`start`: an object that must be running (a background checker) is started by the
    first `get()` that finds it stopped, e.g. in a worker forked from a preloaded master.
    `close`: how a reset disposes of a built object.
    """

    def __init__(self, runtime: Runtime, name: str, build: Callable[[Conf], T], *,
                 close: Callable[[T], None] | None = None,
                 ready: Callable[[T], bool] | None = None,
                 start: Callable[[T], None] | None = None) -> None:
        self.runtime = runtime
        self.name = name
        self._build = build
        self._close = close
        self._ready = ready
        self._start = start
        self._value: T = _EMPTY
        self._injected: T = _EMPTY
        self._lock = threading.Lock()

    def get(self) -> T:
        injected = self._injected
        if injected is not _EMPTY:
            return injected
        value = self._value
        if value is _EMPTY or (self._ready is not None and not self._ready(value)):
            value = self._build_or_start()
        return value

    def _build_or_start(self) -> T:
        # Critical section: one build (and one start) per process; the other greenlets of a
        # fresh worker wait here for the object they need anyway.
        with self._lock:
            value = self._value
            if value is _EMPTY:
                value = self._build(self.runtime.conf())
                self._value = value
            if self._ready is not None and self._start is not None and not self._ready(value):
                self._start(value)
            return value

    def replace(self, value: T) -> None:
        """Serve `value` from now on, as if built (a live topology change); not closed here.

        No lock: one attribute assignment is atomic, and the caller may be a native thread,
        which must not wait on this (gevent's, in a worker) lock."""
        self._value = value

    @property
    def built(self) -> bool:
        """True once `get()` built the object (an injected one does not count)."""
        return self._value is not _EMPTY

    def reset(self) -> None:
        """Drop the built object (closing it); the next `get()` builds anew."""
        with self._lock:
            value, self._value = self._value, _EMPTY
        if value is not _EMPTY and self._close is not None:
            self._close(value)

    @contextlib.contextmanager
    def injected(self, value: T) -> Iterator[T]:
        """Serve `value` instead of the built object inside the block (tests)."""
        previous, self._injected = self._injected, value
        try:
            yield value
        finally:
            self._injected = previous

    def _after_fork_in_child(self) -> None:
        # A parent thread may have held the lock at fork time; it does not exist here.
        self._lock = threading.Lock()


class Runtime:
    """The registry: `conf()` from ``settings.SHARDSVC`` (or the mapping given), and its slots."""

    def __init__(self, entry: Mapping[str, Any] | None = None) -> None:
        self._entry = entry
        self._conf: Conf | None = None
        self._slots: dict[str, Slot[Any]] = {}
        self._lock = threading.Lock()

    def conf(self) -> Conf:
        conf = self._conf
        if conf is None:
            with self._lock:
                conf = self._conf
                if conf is None:
                    conf = self._conf = Conf.from_entry(self._read_entry())
        return conf

    def _read_entry(self) -> Mapping[str, Any]:
        if self._entry is not None:
            return self._entry
        return getattr(settings, SETTINGS_NAME, {})

    def slot(self, name: str, build: Callable[[Conf], T], *,
             close: Callable[[T], None] | None = None,
             ready: Callable[[T], bool] | None = None,
             start: Callable[[T], None] | None = None) -> Slot[T]:
        """Declare a lazily built object; its owner keeps the returned Slot and calls get()."""
        with self._lock:
            if name in self._slots:
                raise ValueError(f"runtime slot {name!r} is declared twice")
            slot = Slot(self, name, build, close=close, ready=ready, start=start)
            self._slots[name] = slot
        return slot

    def __getitem__(self, name: str) -> Slot[Any]:
        try:
            return self._slots[name]
        except KeyError:
            raise KeyError(f"no runtime slot {name!r}: the declared ones are "
                           f"{', '.join(sorted(self._slots))}") from None

    def get(self, name: str) -> Any:
        return self[name].get()

    def injected(self, name: str, value: Any) -> contextlib.AbstractContextManager[Any]:
        """``with runtime.injected("replica_health", fake):`` serves `fake` inside the block."""
        return self[name].injected(value)

    def reset(self) -> None:
        """Forget the Conf and every built object (stopping those that run), so the next use
        reads settings again and builds anew. Injected objects stay until their block ends."""
        with self._lock:
            self._conf = None
            slots = list(self._slots.values())
        for slot in slots:
            slot.reset()

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        for slot in self._slots.values():
            slot._after_fork_in_child()


runtime = Runtime()


def conf() -> Conf:
    """The current Conf of this process's registry."""
    return runtime.conf()


def _reset_on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    if setting == SETTINGS_NAME:
        runtime.reset()


# So override_settings(SHARDSVC=...) takes effect, as Django does for DATABASES and CACHES.
setting_changed.connect(_reset_on_setting_changed, dispatch_uid="shards.runtime.reset")
os.register_at_fork(after_in_child=runtime._after_fork_in_child)


# ----- replica health: defined by routers, needed below them ----------------------------------


def _build_replica_health(conf: Conf) -> ReplicaHealthSource:
    factory: Callable[[Conf], ReplicaHealthSource] = import_string(conf.replica_health_factory)
    return factory(conf)


def _health_running(health: ReplicaHealthSource) -> bool:
    return cast(ManagedReplicaHealth, health).running


def _start_health(health: ReplicaHealthSource) -> None:
    # The first check runs here, synchronously, so the first request already has data.
    managed = cast(ManagedReplicaHealth, health)
    managed.check_once()
    managed.start()


def _stop_health(health: ReplicaHealthSource) -> None:
    cast(ManagedReplicaHealth, health).stop()


_replica_health: Slot[ReplicaHealthSource] = runtime.slot(
    "replica_health", _build_replica_health, close=_stop_health, ready=_health_running,
    start=_start_health,
)


def replica_health() -> ReplicaHealthSource:
    """This process's replica health, built from the Conf and started on first use."""
    return _replica_health.get()
