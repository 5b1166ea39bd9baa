"""The ops dashboard's switchover and failover history: the button's request checked before
anything runs, and each Patroni cluster as the page shows it (members, the last failovers, the
last switchover the dashboard started).

The button runs `manage.py switchover <cluster> [--to <member>]`, the CLI itself
(migrations_tools/switchover.py): nothing here switches over. What it adds is the refusals a web
form needs (each a 4xx with a message, never a 500) and the history's "old leader" and reason,
which Patroni's `/history` does not keep.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from migrations_tools import patroni_status, switchover_runs
from migrations_tools.switchover_runs import SwitchoverRun
from shards import patroni
from shards.lsn import format_lsn
from shards.shardmap import Cluster, ShardMap

# Patroni member names as the topology manager and Patroni's `name:` allow; anything else is
# refused before it reaches a command line.
MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
# How far a history entry's time may lie outside a dashboard switchover's run and still be it:
# the entry's time is the new leader's history file, written at its promotion.
MATCH_SLACK = dt.timedelta(seconds=5)


class RefusedRequest(Exception):
    """A switchover request the dashboard does not start; the answer's status, code, message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SwitchoverRequest:
    cluster: Cluster
    leader: str
    target: str | None  # None: Patroni picks

    @property
    def command(self) -> list[str]:
        """The CLI's arguments, exactly as an operator types them."""
        return ["switchover", self.cluster.name, *(["--to", self.target] if self.target else [])]

    def describe(self) -> str:
        to = self.target or "a member Patroni picks"
        return f"the switchover of {self.cluster.name} from {self.leader} to {to}"


def check_request(shard_map: ShardMap, cluster_name: str, target: str, *,
                  members: Callable[[Cluster], list[dict[str, Any]]],
                  running: dict[str, int]) -> SwitchoverRequest:
    """The request if it can start now; else RefusedRequest saying why. `members` reads a
    cluster's members from Patroni, `running` is cluster -> pid of switchovers running."""
    names = [c.name for c in shard_map.clusters]
    if cluster_name not in names:
        raise RefusedRequest(400, "unknown_cluster",
                             f"no cluster {cluster_name[:64]!r}: choose one of {', '.join(names)}")
    cluster = next(c for c in shard_map.clusters if c.name == cluster_name)
    if not cluster.patroni:
        raise RefusedRequest(
            409, "not_patroni",
            f"{cluster.name} is not managed by Patroni (its table in the topology file has no "
            "patroni = [...] REST URLs): there is nothing to switch over to. Start the topology "
            "without --plain for a highly available one")
    if target and not MEMBER_NAME.match(target):
        raise RefusedRequest(400, "bad_member",
                             f"{target[:64]!r} is not a member name (letters, digits, _ . -)")
    if cluster.name in running:
        raise RefusedRequest(
            409, "switchover_running",
            f"a switchover of {cluster.name} is already running (pid {running[cluster.name]}): "
            "wait for it to end")
    try:
        found = members(cluster)
    except patroni.PatroniError as exc:
        raise RefusedRequest(503, "patroni_unreachable", str(exc)) from None
    member_names = [str(m.get("name")) for m in found]
    leaders = [str(m.get("name")) for m in found if m.get("role") in patroni.LEADER_ROLES]
    if not leaders:
        raise RefusedRequest(409, "no_leader",
                             f"{cluster.name} has no leader now: wait for Patroni to elect one "
                             "(a failover may be under way)")
    others = [n for n in member_names if n != leaders[0]]
    if target and target not in member_names:
        raise RefusedRequest(400, "unknown_member",
                             f"{target!r} is no member of {cluster.name}; choose among: "
                             f"{', '.join(others) or '(none)'}")
    if target == leaders[0]:
        raise RefusedRequest(409, "already_leader",
                             f"{target} already leads {cluster.name}; choose among: "
                             f"{', '.join(others) or '(none)'}")
    if not others:
        raise RefusedRequest(409, "no_candidate",
                             f"{cluster.name} has no member to hand over to; add a replica")
    return SwitchoverRequest(cluster, leaders[0], target or None)


def history_rows(cluster: str, history: list[list[Any]],
                 runs: list[SwitchoverRun]) -> list[dict[str, Any]]:
    """Patroni's history entries ([timeline, lsn, reason, time, new leader]), newest first, with
    the leader that lost the role (the previous entry's new leader, when that entry is kept) and
    the reason: a switchover the dashboard ran, else what PostgreSQL wrote in its history file."""
    rows = []
    previous_leader: str | None = None
    for entry in history:
        timeline, lsn, reason = entry[0], entry[1], entry[2]
        at = _parse_time(entry[3]) if len(entry) > 3 else None
        new_leader = str(entry[4]) if len(entry) > 4 else None
        run = _matching_run(runs, new_leader, at)
        rows.append({
            "cluster": cluster,
            "timeline": f"{timeline} → {int(timeline) + 1}" if isinstance(timeline, int)
            else str(timeline),
            "lsn": format_lsn(lsn) if isinstance(lsn, int) else str(lsn),
            "at": at.astimezone(dt.UTC).isoformat() if at else None,
            "old_leader": (run.old_leader if run else None) or previous_leader,
            "new_leader": new_leader,
            "reason": f"switchover from the {run.by}" if run else f"PostgreSQL: {reason}",
        })
        previous_leader = new_leader
    return rows[::-1]


def _matching_run(runs: list[SwitchoverRun], new_leader: str | None,
                  at: dt.datetime | None) -> SwitchoverRun | None:
    for run in runs:
        if (run.state == "done" and run.new_leader == new_leader and at is not None
                and run.started is not None and run.ended is not None
                and run.started - MATCH_SLACK <= at <= run.ended + MATCH_SLACK):
            return run
    return None


def _parse_time(value: Any) -> dt.datetime | None:
    try:
        parsed = dt.datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def member_row(member: dict[str, Any]) -> dict[str, Any]:
    role = str(member.get("role", "?"))
    lag = member.get("lag")
    return {
        "name": str(member.get("name", "?")), "role": role,
        "state": str(member.get("state", "?")), "timeline": member.get("timeline"),
        "leader": role in patroni.LEADER_ROLES,
        "lag": None if role in patroni.LEADER_ROLES else
        (f"{lag} bytes" if isinstance(lag, int) else str(lag or "unknown")),
    }


def run_view(run: SwitchoverRun | None) -> dict[str, Any] | None:
    if run is None:
        return None
    return {"state": run.state, "outcome": run.outcome, "by": run.by, "log": run.log,
            "started": run.started.isoformat() if run.started else None,
            "new_leader": run.new_leader}


def cluster_view(cluster: Cluster, running: dict[str, int]) -> dict[str, Any]:
    """One Patroni cluster for the page: members, the last failovers, the switchover state."""
    roles = patroni_status.read_roles(cluster)
    runs = switchover_runs.recent_runs(cluster.name, alive=cluster.name in running)
    return {
        "name": cluster.name,
        "error": roles.error,
        "leader": roles.leader,
        "members": [member_row(m) for m in roles.members],
        "history": history_rows(cluster.name, roles.history, runs),
        "running": cluster.name in running,
        "last_switchover": run_view(runs[0] if runs else None),
    }
