"""A fresh directory lookup (after a write hit a move's fence) refreshes the tenant's entry
under both its keys, so the worker's next requests, which name the tenant by slug, go to the
new shard at once (shards/directory.py)."""

from __future__ import annotations

from shards.directory import TenantDirectory, TenantEntry

BEFORE = TenantEntry(id=101, slug="alpha", shard="shard_0", state="active", version=3, min_lsn=0)
AFTER = TenantEntry(id=101, slug="alpha", shard="shard_1", state="active", version=4, min_lsn=0)


class Directory(TenantDirectory):
    """The worker's cache as it is; the shared placement (Redis, the control database) is
    `self.current`, and every read of it is counted."""

    def __init__(self) -> None:
        super().__init__(local_ttl=60.0, redis_ttl=60)
        self.current = BEFORE
        self.fetched: list[tuple[str, str | int]] = []

    def _fetch(self, parsed: tuple[str, str | int]) -> TenantEntry | None:
        self.fetched.append(parsed)
        return self.current


def test_a_fresh_lookup_by_id_refreshes_the_slug_too() -> None:
    directory = Directory()
    assert directory.lookup("alpha").shard == "shard_0"  # cached under the slug
    directory.current = AFTER  # the move flipped
    assert directory.lookup(101, fresh=True).shard == "shard_1"  # the held write's lookup
    directory.fetched.clear()
    assert directory.lookup("alpha") == AFTER  # the next request: no longer the old shard
    assert directory.lookup(101) == AFTER
    assert directory.fetched == []  # both answered from the worker's cache


def test_a_fresh_lookup_by_slug_refreshes_the_id_too() -> None:
    directory = Directory()
    directory.lookup(101)
    directory.current = AFTER
    directory.lookup("alpha", fresh=True)
    directory.fetched.clear()
    assert directory.lookup(101) == AFTER
    assert directory.fetched == []
