"""Database alias names, derived from the topology: the lowest module, importable from anywhere.

The control database is Django's `default` connection (its own apps, the tenant directory,
the shard registry, move jobs); shard clusters are named `shard_0`, ...; a replica's alias is its
cluster's name, the infix and its number (`shard_0_replica_1`).
"""

from __future__ import annotations

CONTROL_ALIAS = "default"
REPLICA_INFIX = "_replica_"
