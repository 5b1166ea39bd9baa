"""Where a benchmark's CPU went: the box's busy time over a window, split by kind of process.

Read from /proc: the box's busy time from /proc/stat (exact), each live process's own CPU from
/proc/<pid>/stat. CPU of processes that started and exited inside the window (short-lived
PostgreSQL backends, pg_ctl and friends) is not in any live process's own time: it is what is
left of the busy time once the groups are counted, printed as "exited or unlisted". A benchmark
whose load fell short of what it asked can then say whether the box was the limit.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from deploy.processes import proc_stats, stat_fields

# By the executable's name, which setproctitle does not change (a PostgreSQL backend's command
# line does change, and paths in command lines may hold any of these words).
BY_NAME = {"postgres": "PostgreSQL", "etcd": "etcd", "pgbouncer": "PgBouncer",
           "redis-server": "Redis", "patroni": "Patroni"}
# Then by the command line: Gunicorn's processes retitle themselves, Patroni may run as python3.
BY_COMMAND = (("gunicorn", "service (Gunicorn)"), ("patroni", "Patroni"))
ME = "this benchmark (its clients)"


def group_of(pid: int, comm: str, cmdline: str, *, me: int) -> str:
    """The group a process's CPU is counted in."""
    if pid == me:
        return ME
    if comm in BY_NAME:
        return BY_NAME[comm]
    for word, group in BY_COMMAND:
        if word in cmdline.lower():
            return group
    return "other"


@dataclasses.dataclass(frozen=True)
class Snapshot:
    busy: int  # clock ticks the box's cores were busy since boot
    total: int  # clock ticks of all cores since boot, idle included
    own: dict[int, tuple[str, int]]  # pid -> (group, its own user + system ticks)


def snapshot() -> Snapshot:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in cpu[:8])
    busy = user + nice + system + irq + softirq + steal
    own: dict[int, tuple[str, int]] = {}
    me = os.getpid()
    for pid, raw in proc_stats():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue  # exited while listed
        comm = raw[raw.index("(") + 1:raw.rindex(")")]
        fields = stat_fields(raw)
        own[pid] = (group_of(pid, comm, cmdline, me=me), int(fields[11]) + int(fields[12]))
    return Snapshot(busy=busy, total=busy + idle + iowait, own=own)


@dataclasses.dataclass
class CpuSplit:
    """CPU seconds by group over one or more windows, and the box's busy and total seconds."""
    seconds: Counter[str] = dataclasses.field(default_factory=Counter)
    busy: float = 0.0
    total: float = 0.0
    wall: float = 0.0

    def add(self, before: Snapshot, after: Snapshot, wall: float) -> None:
        tick = os.sysconf("SC_CLK_TCK")
        counted = 0
        for pid, (group, ticks) in after.own.items():
            start = before.own.get(pid)
            # A pid seen twice is one process only if its time did not go back (pids recycle).
            used = ticks - start[1] if start is not None and start[1] <= ticks else ticks
            self.seconds[group] += used / tick
            counted += used
        busy = after.busy - before.busy
        self.seconds["exited or unlisted"] += max(busy - counted, 0) / tick
        self.busy += busy / tick
        self.total += (after.total - before.total) / tick
        self.wall += wall

    @contextmanager
    def window(self) -> Iterator[None]:
        """Adds what the box's CPU did while the block ran."""
        before, started = snapshot(), time.monotonic()
        yield
        self.add(before, snapshot(), time.monotonic() - started)

    def merge(self, other: CpuSplit) -> None:
        self.seconds.update(other.seconds)
        self.busy += other.busy
        self.total += other.total
        self.wall += other.wall

    def line(self) -> str:
        """Cores used on average per group, busiest first, and how busy the box was."""
        if self.wall <= 0 or self.total <= 0:
            return "CPU: nothing measured"
        cores = self.total / self.wall
        parts = ", ".join(f"{group} {seconds / self.wall:.2f}"
                          for group, seconds in self.seconds.most_common() if seconds > 0)
        return (f"CPU over the runs, in cores of {cores:.0f}: {parts}; the box "
                f"{100 * self.busy / self.total:.0f}% busy")
