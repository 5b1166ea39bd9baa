"""Patroni's own main(), with two of its waits in a switchover shortened. Neither is a setting
in the pinned release (pyproject's `ha` extra); deploy/patroni.py runs this file's text with the
Patroni virtualenv's Python (`python -c`, as the database user, who may not read the project's
folder), and tests/unit/test_patroni_launcher.py checks that the release still has both places.
A release without them runs unchanged.

Stopping a leader, Patroni
1. reads pg_controldata every `STOP_POLLING_INTERVAL` (1 s) until the cluster reads "shut down";
2. then sleeps 1 s "to give replicas some more time to catch up", and checks once that a member
   has received the shutdown checkpoint (`Ha.is_failover_possible(cluster_lsn=...)`, the only
   call that passes a position) before it releases the leader key to it.

Measured with tests/benchmarks/bench_switchover.py, the first was most of a second of a
switchover's write pause and the second a whole second. Here the poll is 0.1 s, and the sleep
is replaced by the same check made every 0.05 s for up to the same second: the key goes as soon
as the candidate has the checkpoint, never before (the check is Patroni's own) and never later
than Patroni would release it.
"""

import sys
import time
from typing import Any

# patroni.postgresql before patroni.ha: the other way round is a circular import in the pinned
# release.
import patroni.postgresql
from patroni import ha

STOP_POLLING_INTERVAL = 0.1
CATCH_UP_WAIT = 1.0  # Patroni's own sleep: the longest a replica is given
CATCH_UP_POLL = 0.05
# The callbacks that sleep before the check: the leader's demotion and Patroni's own shutdown.
SHUTDOWN_CALLBACKS = frozenset({"on_shutdown", "_on_shutdown"})


class HaTime:
    """patroni.ha's `time`, but for the sleep of a shutdown callback, which returns at once:
    the check after it waits instead (polled_failover_check)."""

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    @staticmethod
    def sleep(seconds: float) -> None:
        if sys._getframe(1).f_code.co_name in SHUTDOWN_CALLBACKS:
            return
        time.sleep(seconds)


def polled(check: Any) -> Any:
    def polled_failover_check(self: Any, *, cluster_lsn: int = 0,
                              exclude_failover_candidate: bool = False) -> bool:
        if not cluster_lsn:  # not a shutdown callback's check: as Patroni makes it
            return bool(check(self, exclude_failover_candidate=exclude_failover_candidate))
        deadline = time.monotonic() + CATCH_UP_WAIT
        while not check(self, cluster_lsn=cluster_lsn,
                        exclude_failover_candidate=exclude_failover_candidate):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            # The last check starts at the deadline at the latest: when Patroni's own, after
            # its sleep, would have started.
            time.sleep(min(CATCH_UP_POLL, left))
        return True

    return polled_failover_check


def shorten_waits() -> list[str]:
    """Apply both changes where the release has their places; the names of those applied."""
    applied = []
    if hasattr(patroni.postgresql, "STOP_POLLING_INTERVAL"):
        patroni.postgresql.STOP_POLLING_INTERVAL = STOP_POLLING_INTERVAL
        applied.append("stop polling")
    if getattr(ha, "time", None) is time and hasattr(ha.Ha, "is_failover_possible"):
        ha.time = HaTime()
        ha.Ha.is_failover_possible = polled(ha.Ha.is_failover_possible)
        applied.append("catch-up check")
    return applied


if __name__ == "__main__":
    shorten_waits()
    from patroni.__main__ import main

    sys.argv[0] = "patroni"
    sys.exit(main())
