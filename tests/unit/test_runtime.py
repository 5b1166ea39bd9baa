"""The runtime registry (shards/runtime.py): one settings entry, defaults in one place, objects
built lazily, one reset on setting_changed, and a router that reads an injected health source."""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import psycopg
import pytest
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.test import override_settings

from comments.models import Thread
from routers.replica_checker import ReplicaHealth
from routers.replicas import get_replica_health
from routers.router import ShardRouter, explain_read_choice
from routers.state import routing_scope
from shards import sharded
from shards.directory import TenantEntry, get_directory
from shards.redisguard import get_breaker
from shards.runtime import Conf, Runtime, conf, environ_names, environ_overrides, runtime
from shards.tenancy import tenant
from shards.topology import get_shard_map

REPO = Path(__file__).resolve().parents[2]
ON_SHARD_0 = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=1,
                         min_lsn=0)


@pytest.fixture
def fresh_runtime() -> Iterator[None]:
    """The process's registry, emptied before and after the test."""
    runtime.reset()
    yield
    runtime.reset()


def changed(**values: Any) -> dict[str, Any]:
    """settings.SHARDSVC with some keys changed."""
    return {**settings.SHARDSVC, **values}


# ----- defaults in one place -------------------------------------------------------------------


def test_an_entry_without_tunables_gets_the_conf_defaults() -> None:
    built = Conf.from_entry({})
    assert built == Conf()
    assert (built.replica_max_lag, built.replica_check_interval) == (5.0, 0.5)
    assert (built.directory_local_ttl, built.directory_redis_ttl) == (1.0, 30)
    assert built.fence_retry_seconds == 10.0
    assert (built.redis_breaker_failures, built.redis_breaker_reset) == (3, 1.0)
    assert built.placement_policy == "shards.placement.least_loaded"


def test_objects_take_their_numbers_from_the_conf(fresh_runtime: None) -> None:
    # Settings here set none of the tunables, so every object shows Conf's defaults.
    assert get_directory().local_ttl == Conf.directory_local_ttl == conf().directory_local_ttl
    assert get_directory().redis_ttl == Conf.directory_redis_ttl
    assert get_breaker().reset_after == Conf.redis_breaker_reset
    # The checker's own keyword defaults are the Conf's, not numbers of its own.
    health = ReplicaHealth(get_shard_map())
    assert (health.max_lag, health.interval) == (Conf.replica_max_lag,
                                                 Conf.replica_check_interval)


def test_no_module_reads_a_tunable_from_settings_with_a_default_of_its_own() -> None:
    keys = [spec.name.upper() for spec in dataclasses.fields(Conf)]
    names = "|".join(keys)
    pattern = re.compile(rf"""getattr\(\s*(?:django_)?settings\s*,\s*["']({names})["']""")
    offenders = []
    for package in ("project", "routers", "shards", "sites", "comments", "migrations_tools"):
        for path in (REPO / package).rglob("*.py"):
            for match in pattern.finditer(path.read_text()):
                offenders.append(f"{path.relative_to(REPO)}: {match[0]}")
    assert offenders == [], "read these through shards.runtime.conf()"


def test_the_environment_sets_tunables_and_bad_values_say_which() -> None:
    names = environ_names()
    assert names["DIRECTORY_LOCAL_TTL"] == "SHARDSVC_DIRECTORY_LOCAL_TTL"
    assert "SHARD_MAP" not in names
    found = environ_overrides({"SHARDSVC_DIRECTORY_LOCAL_TTL": "2.5",
                               "SHARDSVC_REDIS_BREAKER_FAILURES": "4", "UNRELATED": "x"})
    assert found == {"DIRECTORY_LOCAL_TTL": 2.5, "REDIS_BREAKER_FAILURES": 4}
    assert isinstance(found["REDIS_BREAKER_FAILURES"], int)
    with pytest.raises(ImproperlyConfigured, match="SHARDSVC_REPLICA_MAX_LAG='soon' is not a"):
        environ_overrides({"SHARDSVC_REPLICA_MAX_LAG": "soon"})
    with pytest.raises(ImproperlyConfigured, match="SHARDSVC_FENCE_RETRY_SECONDS must be pos"):
        environ_overrides({"SHARDSVC_FENCE_RETRY_SECONDS": "0"})
    with pytest.raises(ImproperlyConfigured, match=r"REDIS_BREAKER_FAILURES.*whole number"):
        environ_overrides({"SHARDSVC_REDIS_BREAKER_FAILURES": "0.5"})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"DIRECTORY_LOCAL_TTLS": 1.0}, "unknown keys DIRECTORY_LOCAL_TTLS: the known keys are"),
        ({"REPLICA_MAX_LAG": -1.0}, "REPLICA_MAX_LAG.*positive number of seconds"),
        ({"REPLICA_MAX_LAG": math.inf}, "REPLICA_MAX_LAG"),
        ({"DIRECTORY_REDIS_TTL": 2.5}, "DIRECTORY_REDIS_TTL.*whole number"),
        ({"FENCE_RETRY_SECONDS": True}, "FENCE_RETRY_SECONDS"),
    ],
)
def test_a_bad_entry_is_refused_with_the_key_named(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=message):
        Conf.from_entry(entry)


# ----- built lazily, reset once --------------------------------------------------------------


class CountingEntry(Mapping[str, Any]):
    """A SHARDSVC entry that counts how often it is read."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values
        self.reads = 0

    def __getitem__(self, key: str) -> Any:
        return self.values[key]

    def __iter__(self) -> Iterator[str]:
        self.reads += 1
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def test_a_registry_reads_its_entry_and_builds_its_objects_on_first_use_only() -> None:
    entry = CountingEntry({"FENCE_RETRY_SECONDS": 3.0})
    registry = Runtime(entry)
    builds: list[float] = []

    def build(made: Conf) -> list[float]:
        builds.append(made.fence_retry_seconds)
        return builds

    slot = registry.slot("thing", build)
    assert (entry.reads, builds, slot.built) == (0, [], False)  # declaring reads nothing
    assert slot.get() is builds
    assert slot.get() is registry.get("thing")
    assert builds == [3.0] and slot.built
    reads = entry.reads
    registry.conf()
    assert entry.reads == reads  # the Conf is kept, not read again

    entry.values["FENCE_RETRY_SECONDS"] = 4.0
    registry.reset()
    assert not slot.built
    assert slot.get() is builds
    assert builds == [3.0, 4.0]


def test_a_reset_closes_what_it_drops_and_a_stopped_object_is_started() -> None:
    registry = Runtime({})
    events: list[str] = []

    class Worker:
        running = False

    def start(worker: Worker) -> None:
        events.append("start")
        worker.running = True

    def close(worker: Worker) -> None:
        events.append("close")
        worker.running = False

    slot = registry.slot("worker", lambda _conf: Worker(), close=close,
                         ready=lambda worker: worker.running, start=start)
    worker = slot.get()
    assert worker.running and events == ["start"]
    slot.get()
    assert events == ["start"]  # running: not started twice
    worker.running = False  # e.g. a worker forked from a preloaded master
    assert slot.get() is worker and events == ["start", "start"]
    registry.reset()
    assert events == ["start", "start", "close"] and not worker.running


def test_a_slot_name_is_declared_once() -> None:
    registry = Runtime({})
    registry.slot("thing", lambda _conf: 1)
    with pytest.raises(ValueError, match="declared twice"):
        registry.slot("thing", lambda _conf: 2)
    with pytest.raises(KeyError, match=r"no runtime slot 'other'.*thing"):
        registry.get("other")


def test_the_process_registry_builds_nothing_until_asked(fresh_runtime: None) -> None:
    for name in ("shard_map", "directory", "redis_breaker", "site_keys", "replica_health"):
        assert not runtime[name].built, name
    directory = get_directory()
    assert runtime["directory"].built
    assert not runtime["redis_breaker"].built
    assert get_directory() is directory


def test_changing_the_settings_entry_resets_every_object(fresh_runtime: None) -> None:
    directory, breaker, shard_map = get_directory(), get_breaker(), get_shard_map()
    with override_settings(SHARDSVC=changed(DIRECTORY_LOCAL_TTL=4.0, REDIS_BREAKER_RESET=7.0)):
        assert not runtime["directory"].built  # dropped by setting_changed
        assert get_directory() is not directory
        assert get_directory().local_ttl == 4.0
        assert get_breaker() is not breaker and get_breaker().reset_after == 7.0
        assert conf().directory_local_ttl == 4.0
        assert get_shard_map() is shard_map  # the same map object, read again from the entry
    # Leaving the override is a change too: back to the defaults, in new objects.
    assert get_directory().local_ttl == Conf.directory_local_ttl
    assert get_breaker().reset_after == Conf.redis_breaker_reset


def test_other_settings_leave_the_registry_alone(fresh_runtime: None) -> None:
    directory = get_directory()
    with override_settings(TENANT_HEADER="X-Other"):
        assert get_directory() is directory


def test_an_injected_object_is_served_until_its_block_ends(fresh_runtime: None) -> None:
    fake = object()
    with runtime.injected("directory", fake):
        assert get_directory() is fake
        runtime.reset()  # a reset drops built objects, not what a test injected
        assert get_directory() is fake
    assert get_directory() is not fake


# ----- the router reads an injected health source ------------------------------------------


class FakeHealth:
    """A replica health source that answers what the test says, and records what it is asked."""

    def __init__(self, usable: dict[str, list[str]]) -> None:
        self.usable = usable
        self.asked: list[tuple[str, int]] = []
        self.failed: list[tuple[str, str]] = []

    def usable_replicas(self, cluster: str, *, min_lsn: int = 0) -> list[str]:
        self.asked.append((cluster, min_lsn))
        return list(self.usable.get(cluster, []))

    def mark_failed(self, alias: str, error: str) -> None:
        self.failed.append((alias, error))

    def out_of_reach(self, cluster: str, position: int) -> bool:
        return False

    def states(self) -> dict[str, Any]:
        return {}

    def check_once(self) -> None:
        pass


@pytest.fixture
def fake_health() -> Iterator[FakeHealth]:
    fake = FakeHealth({"shard_0": ["shard_0_replica_1"], "shard_1": ["shard_1_replica_1"]})
    with runtime.injected("replica_health", fake):
        yield fake
    # Nothing was built: the fake stood in for a checker against real servers.
    assert not runtime["replica_health"].built


@pytest.mark.parametrize(
    "why", ["lagging beyond the bound", "down", "promoted (not in recovery)"])
def test_a_replica_the_health_source_rules_out_sends_reads_to_the_primary(
        fake_health: FakeHealth, why: str) -> None:
    fake_health.usable["shard_0"] = []  # what a source answers for each of these
    with tenant(ON_SHARD_0):
        assert ShardRouter().db_for_read(Thread) == "shard_0", why
    assert explain_read_choice("shard_0") == ("shard_0", "no_healthy_replica")
    assert explain_read_choice("shard_1") == ("shard_1_replica_1", "replica")


def test_a_caught_up_replica_serves_reads(fake_health: FakeHealth) -> None:
    with tenant(ON_SHARD_0), routing_scope() as routing:
        assert ShardRouter().db_for_read(Thread) == "shard_0_replica_1"
        routing.require_position("shard_0", 5000)
        assert explain_read_choice("shard_0") == ("shard_0_replica_1", "replica")
    # The source was asked with the tenant's position, then with the request's causal token.
    assert fake_health.asked == [("shard_0", 0), ("shard_0", 5000)]
    assert get_replica_health() is fake_health


def test_a_read_that_fails_marks_the_replica_in_the_injected_source(
        fake_health: FakeHealth) -> None:
    sharded._drop_replica("shard_0_replica_1", psycopg.OperationalError("server closed"))
    assert fake_health.failed == [("shard_0_replica_1", "server closed")]
