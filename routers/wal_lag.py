"""Replica lag from WAL positions: how far behind its cluster a replica is, in bytes and seconds.

The old reading, `now() - pg_last_xact_replay_timestamp()` on the replica, is the age of the last
replayed commit: after an idle hour the first write makes a caught-up replica read as an hour
behind for as long as that write takes to replay. Here lag is measured against the cluster's
position instead:

- bytes behind = the furthest WAL position the cluster is known to have reached (the primary's
  `pg_current_wal_lsn()`, or a replica's receive position when the primary cannot be asked)
  minus the replica's replay position; 0 when it has replayed everything, however long the
  primary was idle;
- seconds behind = how long ago the cluster first went past the replica's replay position, as
  sampled by the checker: 0 when caught up, and growing steadily while replay is stuck. A
  `WalTimeline` keeps those samples: the first time each higher position was seen.

The estimate errs low by at most one check interval (the cluster passed the position somewhere
between two samples). A worker that starts while a replica is already far behind sees its lag
grow from 0, so such a replica is skipped after max_lag seconds, not at once; reads that must
see a write carry its LSN and are never served by a replica that has not replayed it.
"""

from __future__ import annotations

import bisect
import math
from collections import deque

# Samples older than this are dropped, keeping the newest of them: a replica behind all of
# them reads at least this far behind, well past any sensible max_lag.
DEFAULT_HORIZON = 60.0


def bytes_behind(reference_lsn: int, replay_lsn: int) -> int:
    """WAL bytes not yet replayed: 0 when the replica is at or past the reference."""
    return max(0, reference_lsn - replay_lsn)


class WalTimeline:
    """When a cluster was first seen at each higher WAL position (one per cluster).

    Not locked: the checker calls it under its own lock.
    """

    def __init__(self, horizon: float = DEFAULT_HORIZON) -> None:
        if not (isinstance(horizon, int | float) and math.isfinite(horizon) and horizon > 0):
            raise ValueError(f"horizon must be a positive number of seconds, got {horizon!r}")
        self.horizon = float(horizon)
        self._times: deque[float] = deque()
        self._lsns: deque[int] = deque()

    def __len__(self) -> int:
        return len(self._lsns)

    @property
    def latest(self) -> int | None:
        """The furthest position seen, or None before the first sample."""
        return self._lsns[-1] if self._lsns else None

    def observe(self, lsn: int, at: float, *, authoritative: bool = False) -> None:
        """The cluster was at `lsn` or beyond at time `at` (monotonic seconds).

        A replica's receive position is a lower bound, ignored when not past what is known.
        The primary's own position is `authoritative`: one lower than what was seen means a
        different primary (a restore, a rebuilt cluster), so the timeline starts again from it.
        """
        if self._lsns and lsn <= self._lsns[-1]:
            if authoritative and lsn < self._lsns[-1]:
                self._times.clear()
                self._lsns.clear()
            else:
                return
        self._times.append(at)
        self._lsns.append(lsn)
        cutoff = at - self.horizon
        while len(self._times) >= 2 and self._times[1] <= cutoff:
            self._times.popleft()
            self._lsns.popleft()

    def lag_seconds(self, replay_lsn: int, now: float) -> float:
        """How long ago the cluster first went past `replay_lsn`: 0 if it never did."""
        index = bisect.bisect_right(self._lsns, replay_lsn)
        if index == len(self._lsns):
            return 0.0
        return max(0.0, now - self._times[index])
