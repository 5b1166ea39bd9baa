"""Tenant isolation under gevent: greenlets switching tenants never see another's rows."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from comments.models import Thread
from deploy.topology import PROJECT_DIR, LocalTopology
from shards.tenancy import tenant
from tests.client import wait_until

pytestmark = pytest.mark.usefixtures("django_db")

ROWS = {"a": 7, "b": 5, "c": 3}


@pytest.fixture(scope="module")
def isolated_rows(tenants) -> dict[str, int]:
    counts = {}
    for key, n in ROWS.items():
        entry = tenants[key]
        with tenant(entry):
            Thread.objects.filter(url__startswith="/iso/").delete()
            for i in range(n):
                Thread.objects.create(url=f"/iso/{entry.slug}/{i}")
            counts[entry.slug] = n

    def replicas_caught_up() -> bool:
        for key, n in ROWS.items():
            entry = tenants[key]
            replica = f"{entry.shard}_replica_1"
            got = Thread.unscoped.using(replica).filter(
                tenant_id=entry.id, url__startswith="/iso/"
            ).count()
            if got != n:
                return False
        return True

    wait_until(replicas_caught_up, timeout=15, what="replicas to hold the rows")
    return counts


def test_two_hundred_greenlets_switching_tenants_never_cross(
    topology: LocalTopology, isolated_rows: dict[str, int]
) -> None:
    env = topology.service_env(SHARDSVC_POOL_MAX_CONNS="50", SHARDSVC_POOL_TIMEOUT="20")
    args = [f"{slug}={n}" for slug, n in isolated_rows.items()]
    run = subprocess.run(
        [sys.executable, "-m", "tests.probes.isolation", "200", "5", *args],
        cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=240, check=False,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report["violation_count"] == 0, report["violations"]
    assert report["reads"] == 200 * 5 * 2
    assert report["orphan"] == "NoTenantContext"
