"""The topology as objects: clusters of servers (a primary and its replicas) and the map of them.

Built by ``shards.topology_file.load_shard_map()`` from the topology file; immutable, so a
topology change builds a new map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from shards.errors import UnknownAlias, UnknownShard

Role = Literal["primary", "replica"]


@dataclass(frozen=True)
class Server:
    """One PostgreSQL server as Django sees it: an alias and how to reach it."""

    alias: str
    dsn: str = field(repr=False)  # DSNs may carry a password: keep them out of reprs and logs
    direct_dsn: str = field(repr=False)
    role: Role


@dataclass(frozen=True)
class Cluster:
    """A primary and its replicas; the control cluster is named ``default``."""

    name: str
    primary: Server
    replicas: tuple[Server, ...] = ()
    # The REST API of every member when Patroni manages the cluster (ops commands: switchover,
    # shard_status); empty otherwise.
    patroni: tuple[str, ...] = ()

    @property
    def servers(self) -> tuple[Server, ...]:
        return (self.primary, *self.replicas)


@dataclass(frozen=True)
class ShardMap:
    """Every cluster in the topology file. Immutable: a topology change builds a new map."""

    control: Cluster
    shards: tuple[Cluster, ...]
    redis_url: str = field(repr=False)  # may carry a password
    source: Path
    # Lookup tables for the routers' hot path; plain dicts so the map pickles and deep-copies.
    _shards_by_name: dict[str, Cluster] = field(init=False, repr=False, compare=False)
    _by_alias: dict[str, tuple[Server, Cluster]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_alias: dict[str, tuple[Server, Cluster]] = {}
        for cluster in self.clusters:
            for server in cluster.servers:
                if server.alias in by_alias:
                    raise ValueError(f"duplicate database alias {server.alias!r} in {self.source}")
                by_alias[server.alias] = (server, cluster)
        object.__setattr__(self, "_shards_by_name", {c.name: c for c in self.shards})
        object.__setattr__(self, "_by_alias", by_alias)

    @property
    def shard_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.shards)

    @property
    def clusters(self) -> tuple[Cluster, ...]:
        return (self.control, *self.shards)

    def shard(self, name: str) -> Cluster:
        try:
            return self._shards_by_name[name]
        except KeyError:
            raise UnknownShard(
                f"unknown shard {name!r}: {self.source} defines {', '.join(self.shard_names)}. "
                "Use one of those, or add the shard to the topology file and reload.",
                name=name, known=self.shard_names,
            ) from None

    def servers(self) -> tuple[Server, ...]:
        return tuple(s for c in self.clusters for s in c.servers)

    def server(self, alias: str) -> Server:
        return self._lookup(alias)[0]

    def cluster_of(self, alias: str) -> Cluster:
        return self._lookup(alias)[1]

    def _lookup(self, alias: str) -> tuple[Server, Cluster]:
        try:
            return self._by_alias[alias]
        except KeyError:
            raise UnknownAlias(
                f"unknown database alias {alias!r}: {self.source} derives "
                f"{', '.join(self._by_alias)}."
            ) from None
