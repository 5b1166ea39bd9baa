"""What one routing decision costs: Django's `router.db_for_read/db_for_write` for a sharded
model inside a tenant and a request's routing state, timed in this process, next to a bare
function call and the same calls for a control (unsharded) model.

Needs Django set up against a running topology (the router reads the shard map and the
replica health this process builds on first use); no SQL runs inside the timed loops.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Decision:
    name: str
    micros: list[float]  # microseconds per call, one figure per repeat (loop overhead included)
    routed_to: str

    @property
    def median(self) -> float:
        return statistics.median(self.micros)


def time_calls(fn: Callable[[type], object], arg: type, n: int, repeats: int) -> list[float]:
    """Microseconds per call of fn(arg), one figure per repeat."""
    results = []
    gc.disable()
    try:
        for _ in range(repeats):
            start = time.perf_counter_ns()
            for _ in range(n):
                fn(arg)
            results.append((time.perf_counter_ns() - start) / n / 1000)
    finally:
        gc.enable()
    return results


def router_costs(site: str, *, n: int, repeats: int, settle: float = 15.0) -> list[Decision]:
    """The decisions for `site` (a slug). Reads are timed once a read of the site's shard is
    routed to a replica (the common case), or after `settle` seconds whatever it is routed to:
    the table says where."""
    from django.db import router

    from comments.models import Thread
    from routers.state import routing_scope
    from shards.models import Tenant
    from shards.tenancy import tenant

    def bare_call(model: type) -> str:  # the floor: a Python call of the same shape
        return "default"

    rows = [Decision("bare function call", time_calls(bare_call, Thread, n, repeats), "-"),
            Decision("db_for_read(control model)",
                     time_calls(router.db_for_read, Tenant, n, repeats),
                     router.db_for_read(Tenant)),
            Decision("db_for_write(control model)",
                     time_calls(router.db_for_write, Tenant, n, repeats),
                     router.db_for_write(Tenant))]
    with tenant(site) as entry:
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:  # the replica health's first checks
            with routing_scope():
                if router.db_for_read(Thread) != entry.shard:
                    break
            time.sleep(0.2)
        # Separate routing states: after a write, reads of the request stay on the primary.
        with routing_scope():
            rows.append(Decision("db_for_read(Thread)",
                                 time_calls(router.db_for_read, Thread, n, repeats),
                                 router.db_for_read(Thread)))
        with routing_scope():
            rows.append(Decision("db_for_write(Thread)",
                                 time_calls(router.db_for_write, Thread, n, repeats),
                                 router.db_for_write(Thread)))
    return rows
