"""Run as a subprocess under gevent (as in a Gunicorn gevent worker): many greenlets switch
tenants at random and read, yielding mid-read; every row must be the current tenant's.

    python -m tests.probes.isolation GREENLETS ROUNDS SLUG=COUNT ...

Prints one JSON line: reads done, violations, and whether a spawned greenlet inherited a tenant.
"""

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402

import django  # noqa: E402
import gevent  # noqa: E402

django.setup()

from django.db import connections  # noqa: E402

from comments.models import Thread  # noqa: E402
from routers.state import routing_scope  # noqa: E402
from shards.errors import NoTenantContext  # noqa: E402
from shards.tenancy import current_tenant, tenant  # noqa: E402


def main() -> None:
    greenlets, rounds = int(sys.argv[1]), int(sys.argv[2])
    expected = {slug: int(n) for slug, n in (arg.split("=") for arg in sys.argv[3:])}
    slugs = sorted(expected)
    violations: list[str] = []
    reads = 0

    def check(slug: str, rng: random.Random) -> None:
        nonlocal reads
        with tenant(slug) as entry, routing_scope():
            gevent.sleep(rng.random() * 0.003)  # let other greenlets switch tenants meanwhile
            rows = list(
                Thread.objects.filter(url__startswith="/iso/").values_list("tenant_id", "url")
            )
            if current_tenant() != entry:
                violations.append(f"context changed under {slug}")
            for tenant_id, url in rows:
                if tenant_id != entry.id or not url.startswith(f"/iso/{slug}/"):
                    violations.append(f"{slug} read {url} of tenant {tenant_id}")
            if len(rows) != expected[slug]:
                violations.append(f"{slug} read {len(rows)} rows, expected {expected[slug]}")
            reads += 1
        # Each check stands for one request: give the connections back, as Django does when
        # a request finishes.
        connections.close_all()

    def worker(n: int) -> None:
        rng = random.Random(n)
        try:
            for _ in range(rounds):
                outer, inner = rng.choice(slugs), rng.choice(slugs)
                check(outer, rng)
                with tenant(outer):
                    check(inner, rng)  # nested switch, then back to the outer tenant
                    if current_tenant().slug != outer:
                        violations.append("outer tenant not restored")
        finally:
            connections.close_all()

    jobs = [gevent.spawn(worker, n) for n in range(greenlets)]
    gevent.joinall(jobs, raise_error=True)

    # A greenlet spawned inside a tenant block starts with an empty context: it must not
    # inherit the tenant, and a sharded query there must fail loudly.
    def orphan() -> str:
        try:
            list(Thread.objects.all())
        except NoTenantContext:
            return "NoTenantContext"
        finally:
            connections.close_all()
        return "query ran without a tenant"

    with tenant(slugs[0]):
        spawned = gevent.spawn(orphan)
        spawned.join()
    print(json.dumps({"reads": reads, "violations": violations[:20],
                      "violation_count": len(violations), "orphan": spawned.value}))


if __name__ == "__main__":
    main()
