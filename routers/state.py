"""A request's routing state: one object, in one context variable, changed only through its
methods.

What it holds, and who may change it:

    tenant           the tenant the request named             the routing middleware
    tokens           replayed positions reads must see        the middleware (causal tokens in),
                                                              the page cache (require_position)
    written          primaries written by real SQL            the write tracker only (note_write)
    tenant_versions  placements the client has seen          the middleware
    reads            where each read went, and why            the router (note_read)

Metrics and the request log read it after the response, so the middleware sets it for the
request and leaves it set (the next request replaces it; `request_finished` clears it).

The tenant here is the one the request named. The current tenant of a block of code, which
nests and which fan-out threads clear, stays in `shards.tenancy` (`tenant()`, `no_tenant()`):
a scope must not be shared by concurrent greenlets, and this object is.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field

from shards.directory import TenantEntry


@dataclass
class RoutingState:
    """Per-request routing facts the router reads and the middleware turns into causal tokens."""

    tenant: TenantEntry | None = None
    # shard name -> primary WAL position (int) reads of this request must have replayed
    tokens: dict[str, int] = field(default_factory=dict)
    # a token was present but malformed or forged: send every read of the request to primaries
    distrust_replicas: bool = False
    # tenant id -> directory version the client saw when it last wrote: a worker caching an
    # older placement reloads it, so a moved tenant's reads follow its writes
    tenant_versions: dict[int, int] = field(default_factory=dict)
    # shards written in this request: later reads of the request go to their primary
    written: set[str] = field(default_factory=set)
    # shard -> primary WAL position read after the request's last write there (saves the
    # middleware a second query); any later write drops it
    positions: dict[str, int] = field(default_factory=dict)
    # (alias, reason) -> reads routed there in this request: for metrics and tests
    reads: Counter[tuple[str, str]] = field(default_factory=Counter)

    # ----- causal tokens in ---------------------------------------------------------------

    def accept_tokens(self, decoded: Iterable[tuple[dict[str, int], dict[int, int]] | None],
                      known_shards: Iterable[str]) -> None:
        """Take the client's causal tokens, already decoded (None for one that failed to
        decode: reads then go to primaries). Positions on shards the topology does not know
        are dropped; of two tokens the higher position per shard counts."""
        known = set(known_shards)
        for token in decoded:
            if token is None:
                self.distrust_replicas = True
                continue
            positions, versions = token
            for shard, lsn in positions.items():
                if shard in known:
                    self.require_position(shard, lsn)
            for tenant_id, version in versions.items():
                self.saw_tenant_version(tenant_id, version)

    def require_position(self, shard: str, lsn: int) -> None:
        """Reads of `shard` in this request must come from a database that replayed `lsn`
        (never lowers a requirement already there)."""
        if lsn > self.tokens.get(shard, 0):
            self.tokens[shard] = lsn

    def min_position(self, shard: str, floor: int = 0) -> int:
        """The position a read of `shard` must see: the higher of `floor` and the request's."""
        return max(floor, self.tokens.get(shard, 0))

    # ----- writes -------------------------------------------------------------------------

    def note_write(self, shard: str) -> None:
        """A statement that writes ran on `shard`'s primary (called by the write tracker)."""
        self.written.add(shard)
        self.positions.pop(shard, None)

    def wrote_to(self, shard: str) -> bool:
        return shard in self.written

    def remember_position(self, shard: str, lsn: int) -> None:
        """The primary's position read after the request's last write on `shard`."""
        self.positions[shard] = lsn

    def position_after_writes(self, shard: str) -> int | None:
        return self.positions.get(shard)

    # ----- tenant ---------------------------------------------------------------------------

    def set_tenant(self, entry: TenantEntry) -> None:
        self.tenant = entry

    def placement_is_stale(self, entry: TenantEntry) -> bool:
        """The client wrote under a newer placement of `entry` than this worker holds."""
        return self.tenant_versions.get(entry.id, 0) > entry.version

    def saw_tenant_version(self, tenant_id: int, version: int) -> None:
        if version > self.tenant_versions.get(tenant_id, 0):
            self.tenant_versions[tenant_id] = version

    # ----- what the router decided --------------------------------------------------------

    def note_read(self, alias: str, reason: str) -> None:
        self.reads[(alias, reason)] += 1


_state: ContextVar[RoutingState | None] = ContextVar("shardsvc_routing", default=None)


def current_state() -> RoutingState | None:
    return _state.get()


def request_tenant() -> TenantEntry | None:
    """The tenant the current request named, if any."""
    state = _state.get()
    return state.tenant if state is not None else None


def begin_request(state: RoutingState) -> None:
    """Make `state` the request's routing state until the next request or `end_request`
    (not reset on return: metrics and the request log read it after the response)."""
    _state.set(state)


def end_request(**kwargs: object) -> None:
    """`request_finished` receiver: nothing of a finished request routes anything after it."""
    _state.set(None)


@contextmanager
def routing_scope(state: RoutingState | None = None) -> Iterator[RoutingState]:
    """Routing state for one unit of background work (or a test), reset on exit."""
    state = state if state is not None else RoutingState()
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)
