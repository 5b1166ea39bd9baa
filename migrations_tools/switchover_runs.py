"""Switchovers as the ops dashboard tracks them: which clusters have one running on this host, and
how the last one the dashboard started ended.

"Running" is any live `manage.py switchover <cluster>` process of this topology, read from /proc:
one started from the dashboard, by another worker, or from a shell. The command takes no lock of
its own (a database lock would not do: switching over the control cluster drops every session on
it), so the process list is what tells. The outcome is the command's own output, in the log the
dashboard writes for it (`admin_moves.launch_commands`, in moves/ beside the topology file): its
result line names the new leader and the measured pause, a `CommandError` line says why it
stopped.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from migrations_tools.admin_moves import move_log_dir

PROC = Path("/proc")
LOG_PREFIX = "switchover"
# Checking the request (Patroni's members, 2 s per member at worst) and starting the command.
LAUNCH_LOCK_TIMEOUT = 15.0
# Options of `manage.py switchover` (and Django's own) that take a value: the word after one is
# that value, not the cluster.
_OPTIONS_WITH_VALUE = frozenset({"--to", "--timeout", "--settings", "--pythonpath", "-v",
                                 "--verbosity"})
# The command's result line (migrations_tools/management/commands/switchover.py).
_RESULT = re.compile(r"^(?P<cluster>\S+): (?P<old>\S+) -> (?P<new>\S+);")
_STAMP = re.compile(r"-(\d{8}-\d{6})-\d+\.log$")


def switchover_cluster(argv: Sequence[str]) -> str | None:
    """The cluster a `manage.py switchover` (or `django-admin`/`python -m django`) command line
    switches over; None for any other command line."""
    for i, word in enumerate(argv):
        if Path(word).name in ("manage.py", "django-admin") or (
                word == "django" and i > 0 and argv[i - 1] == "-m"):
            rest = list(argv[i + 1:])
            break
    else:
        return None
    if not rest or rest[0] != "switchover":
        return None
    takes_value = False
    for word in rest[1:]:
        if takes_value:
            takes_value = False
        elif word in _OPTIONS_WITH_VALUE:
            takes_value = True
        elif not word.startswith("-"):
            return word
    return None


def running(topology: Path, proc: Path = PROC) -> dict[str, int]:
    """cluster -> pid of a switchover of this topology running on this host now.

    Several topologies may share a host (tests, a developer's machine): a process counts when
    its topology file (SHARDSVC_TOPOLOGY in its environment, else the settings' default beside
    its manage.py) is this one, or when this user cannot read which it is (another user's
    process): refusing a switchover is safer than starting a second one."""
    mine = topology.resolve()
    found: dict[str, int] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "cmdline").read_bytes()
        except OSError:  # ended meanwhile
            continue
        argv = [w.decode(errors="replace") for w in raw.split(b"\0") if w]
        cluster = switchover_cluster(argv)
        if cluster is None:
            continue
        theirs = _topology_of(entry, argv)
        if theirs is None or theirs == mine:
            found.setdefault(cluster, int(entry.name))
    return found


def _topology_of(entry: Path, argv: list[str]) -> Path | None:
    """The topology file a process reads (project/settings.py's rule); None if unknown."""
    try:
        environ = (entry / "environ").read_bytes()
        cwd = Path(os.readlink(entry / "cwd"))
    except OSError:
        return None
    for item in environ.split(b"\0"):
        if item.startswith(b"SHARDSVC_TOPOLOGY="):
            return (cwd / item.split(b"=", 1)[1].decode(errors="replace")).resolve()
    manage = next((w for w in argv if Path(w).name == "manage.py"), None)
    if manage is None:
        return None
    return (cwd / manage).parent.resolve() / ".var" / "topology.toml"


@contextmanager
def launching(*, timeout: float = LAUNCH_LOCK_TIMEOUT) -> Iterator[None]:
    """Held while a worker checks that no switchover runs and starts one: two workers (or two
    app processes on this host) asked at once start one switchover, not two. The started
    process is in /proc before Popen returns, so the next holder sees it. Raises OSError when
    another start holds it past `timeout`."""
    with (move_log_dir() / f"{LOG_PREFIX}.lock").open("a") as handle:
        # Never a blocking flock: under gevent it would stop the whole worker, also the
        # greenlet of this worker that holds the lock, which then never releases it.
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise OSError(f"another switchover was being started for {timeout:.0f} s; "
                                  "try again") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def log_name(cluster: str) -> str:
    return f"{LOG_PREFIX}-{cluster}"


@dataclass(frozen=True)
class SwitchoverRun:
    """One switchover the dashboard started, from its log."""

    cluster: str
    log: str
    started: dt.datetime | None  # UTC, from the log's name
    ended: dt.datetime | None  # UTC: the log's last write, once the command ended
    state: str  # "running", "done" or "failed"
    outcome: str  # the result line, the error, or "" while running
    by: str  # who started it ("ops dashboard: <user>")
    old_leader: str | None = None
    new_leader: str | None = None


def read_run(cluster: str, text: str, *, alive: bool) -> tuple[str, str, str | None, str | None]:
    """(state, outcome, old leader, new leader) from a switchover log's text."""
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("#")]
    for line in reversed(lines):
        found = _RESULT.match(line)
        if found and found["cluster"] == cluster:
            return "done", line, found["old"], found["new"]
    if alive:
        return "running", "", None, None
    errors = [line for line in lines if line.startswith("CommandError:")]
    if errors:
        return "failed", errors[-1].removeprefix("CommandError:").strip(), None, None
    return "failed", (lines[-1] if lines else "the command ended without output"), None, None


def recent_runs(cluster: str, *, alive: bool, folder: Path | None = None,
                limit: int = 10) -> list[SwitchoverRun]:
    """The last switchovers of `cluster` the dashboard started, newest first; `alive`: one of
    that cluster runs now (only the newest can be it)."""
    folder = folder or move_log_dir()
    logs = sorted(folder.glob(f"{log_name(cluster)}-*.log"),
                  key=lambda p: (_started(p) or dt.datetime.min.replace(tzinfo=dt.UTC),
                                 p.stat().st_mtime), reverse=True)[:limit]
    return [_run(cluster, log, alive=alive and n == 0) for n, log in enumerate(logs)]


def _run(cluster: str, log: Path, *, alive: bool) -> SwitchoverRun:
    text = log.read_text(errors="replace")
    state, outcome, old, new = read_run(cluster, text, alive=alive)
    # The header launch_commands writes: "# <stamp> <reason>: <argv>", the argv absolute.
    header = text.splitlines()[0] if text else ""
    by = header.split(" ", 2)[2].split(": /", 1)[0] if header.count(" ") >= 2 else ""
    ended = (dt.datetime.fromtimestamp(log.stat().st_mtime, dt.UTC)
             if state != "running" else None)
    return SwitchoverRun(cluster=cluster, log=str(log), started=_started(log), ended=ended,
                         state=state, outcome=outcome, by=by, old_leader=old, new_leader=new)


def _started(log: Path) -> dt.datetime | None:
    found = _STAMP.search(log.name)
    if not found:
        return None
    return dt.datetime.strptime(found[1], "%Y%m%d-%H%M%S").replace(tzinfo=dt.UTC)
