"""Patroni's view of each cluster it manages, for `shard_status`: every member's role, state,
timeline and lag now, and the failover history (Patroni's `/history`: one entry per timeline
that ended, with the position, the time and the member that took over).

Read from the REST URLs the topology file lists per cluster (`patroni = [...]`); clusters without
them are not Patroni's and are skipped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shards import patroni
from shards.lsn import format_lsn
from shards.shardmap import Cluster, ShardMap

HISTORY_SHOWN = 5  # the last failovers per cluster


@dataclass
class ClusterRoles:
    cluster: str
    members: list[dict[str, Any]] = field(default_factory=list)
    history: list[list[Any]] = field(default_factory=list)
    error: str = ""

    @property
    def leader(self) -> str | None:
        for member in self.members:
            if member.get("role") in patroni.LEADER_ROLES:
                return str(member.get("name"))
        return None


def read_roles(cluster: Cluster) -> ClusterRoles:
    found = ClusterRoles(cluster.name)
    try:
        found.members = patroni.cluster_members(list(cluster.patroni), timeout=2)
    except patroni.PatroniError as exc:
        found.error = str(exc)
        return found
    found.history = patroni.history(list(cluster.patroni), timeout=2)[-HISTORY_SHOWN:]
    return found


def managed(shard_map: ShardMap) -> list[ClusterRoles]:
    return [read_roles(c) for c in shard_map.clusters if c.patroni]


def member_rows(roles: list[ClusterRoles]) -> list[list[str]]:
    rows = []
    for found in roles:
        if found.error:
            rows.append([found.cluster, "?", "UNREACHABLE", "", "", "", found.error])
            continue
        if found.leader is None:
            rows.append([found.cluster, "-", "NO LEADER", "", "", "",
                         "a failover may be under way"])
        for member in found.members:
            lag = member.get("lag")
            rows.append([
                found.cluster, str(member.get("name", "?")), str(member.get("role", "?")),
                str(member.get("state", "?")), str(member.get("timeline", "-")),
                _describe_lag(lag, member.get("role")), "",
            ])
    return rows


def history_rows(roles: list[ClusterRoles]) -> list[list[str]]:
    rows = []
    for found in roles:
        for entry in found.history:
            timeline, lsn, reason = entry[0], entry[1], entry[2]
            at = entry[3] if len(entry) > 3 else "?"
            new_leader = entry[4] if len(entry) > 4 else "?"
            rows.append([found.cluster, str(timeline),
                         format_lsn(int(lsn)) if isinstance(lsn, int) else str(lsn),
                         str(at), str(new_leader), str(reason)])
    return rows


def _describe_lag(lag: Any, role: Any) -> str:
    if role in patroni.LEADER_ROLES:
        return "-"
    if isinstance(lag, int):
        return f"{lag} bytes"
    return str(lag or "unknown")
