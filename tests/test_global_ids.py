"""Global ids: generated in PostgreSQL, unique across shards, ordered by time."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from django.db import connections

from comments.models import Thread
from shards.global_ids import split_id
from shards.models import Shard
from shards.tenancy import tenant
from tests.client import wait_until

pytestmark = pytest.mark.usefixtures("django_db")


def test_ids_are_unique_across_shards_under_concurrent_inserts(tenants) -> None:
    def insert(job: int) -> list[tuple[str, int]]:
        entry = tenants["abc"[job % 3]]
        try:
            with tenant(entry):
                return [(entry.shard, Thread.objects.create(url=f"/gid/{job}/{i}").id)
                        for i in range(40)]
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=12) as pool:
        made = [row for rows in pool.map(insert, range(12)) for row in rows]
    ids = [i for _, i in made]
    assert len(ids) == 480
    assert len(set(ids)) == 480
    generators = {name: Shard.objects.using("default").get(name=name).generator_id
                  for name in ("shard_0", "shard_1")}
    assert generators["shard_0"] != generators["shard_1"]
    for shard, global_id in made:
        assert split_id(global_id)[1] == generators[shard]


def test_ids_follow_time_and_carry_it(tenants) -> None:
    ids = []
    with tenant(tenants["b"]):
        for i in range(20):
            ids.append(Thread.objects.create(url=f"/ordered/{i}").id)
            # The next id comes from a later millisecond than this one's.
            made_ms = split_id(ids[-1])[0]
            wait_until(lambda made_ms=made_ms: time.time() * 1000 >= made_ms + 1, timeout=5,
                       interval=0.0005, what="the clock to pass the last id's millisecond")
    assert ids == sorted(ids)
    now_ms = time.time() * 1000
    for global_id in ids:
        millis, _, _ = split_id(global_id)
        assert abs(now_ms - millis) < 60_000


def test_tenant_ids_come_from_the_control_generator(tenants) -> None:
    assert {split_id(entry.id)[1] for entry in tenants.values()} == {0}
