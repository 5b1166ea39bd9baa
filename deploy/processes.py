"""Small process helpers for the local topology: run as the database user, ports, pid files."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


class TopologyError(RuntimeError):
    """A local topology step failed; the message says what to do about it."""


def service_user() -> str:
    """The user that owns and runs PostgreSQL and PgBouncer.

    initdb and PgBouncer both refuse to run as root, so as root we switch to the
    `postgres` user Debian's packages create; as anyone else we run as ourselves.
    """
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    name = os.environ.get("SHARDSVC_PG_USER", "postgres")
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise TopologyError(
            f"user {name!r} does not exist; install postgresql-15 (it creates it) or set "
            "SHARDSVC_PG_USER to an unprivileged user that may run PostgreSQL"
        ) from None
    return name


def as_service_user(argv: Sequence[str]) -> list[str]:
    return as_user(service_user(), argv)


def as_user(user: str, argv: Sequence[str]) -> list[str]:
    """Run as `user` when we are root; as ourselves otherwise."""
    if os.geteuid() == 0:
        return ["runuser", "-u", user, "--", *argv]
    return list(argv)


def exec_as_user(user: str, argv: Sequence[str]) -> list[str]:
    """As `as_user`, for a long-running process whose pid we keep (etcd, Patroni): setpriv
    execs the command in place, where runuser stays as a parent (its pid, not the process's,
    would be recorded and signalled) and opens a PAM session per start."""
    if os.geteuid() == 0:
        return ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--", *argv]
    return list(argv)


def chown_to_service_user(path: Path) -> None:
    if os.geteuid() == 0:
        chown_to(path, service_user())


def chown_to(path: Path, user: str) -> None:
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise TopologyError(f"user {user!r} does not exist; create it or pick another") from None
    os.chown(path, entry.pw_uid, entry.pw_gid)


def make_dir(path: Path, *, service_owned: bool = False) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o755 if not service_owned else 0o700)
    if service_owned:
        chown_to_service_user(path)
    return path


def check_reachable_by_service_user(path: Path, *, user: str | None = None) -> None:
    """Fail early, with the fix, when the service user cannot reach our folder.

    A clone under a 0700 folder (mktemp -d, a home directory) is the usual cause; PostgreSQL
    would otherwise fail later with a bare "Permission denied".
    """
    if os.geteuid() != 0:
        return
    user = user or service_user()
    probe = subprocess.run(
        as_user(user, ["test", "-x", str(path)]),
        capture_output=True,
        check=False,
    )
    if probe.returncode != 0:
        raise TopologyError(
            f"user {user!r} cannot enter {path}: a parent folder is private. "
            "Give the data folder elsewhere (--dir /srv/shardsvc or SHARDSVC_DIR) or "
            "`chmod o+x` its parents"
        )


def run(argv: Sequence[str], *, what: str, log: Path | None = None, **kwargs) -> str:
    """Run a command; on failure raise TopologyError with its output and the log's tail."""
    result = subprocess.run(list(argv), capture_output=True, text=True, check=False, **kwargs)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip()[-2000:]
        raise TopologyError(f"{what} failed (exit {result.returncode}): {detail}{log_tail(log)}")
    return result.stdout


def log_tail(log: Path | None, lines: int = 20) -> str:
    if log is None or not log.exists():
        return ""
    tail = log.read_text(errors="replace").splitlines()[-lines:]
    return f"\n--- last lines of {log} ---\n" + "\n".join(tail)


def require_binary(path_or_name: str, package: str) -> str:
    found = path_or_name if os.path.isabs(path_or_name) else shutil.which(path_or_name)
    if not found or not os.access(found, os.X_OK):
        raise TopologyError(
            f"{path_or_name} not found; install it with `apt-get install {package}` "
            "(deploy/setup.sh does this)"
        )
    return found


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def require_free_port(port: int, what: str, host: str = "127.0.0.1") -> None:
    if port_in_use(port, host):
        raise TopologyError(
            f"port {port} (for {what}) is already in use by another process; stop it or pick "
            "other ports with --base-port / SHARDSVC_BASE_PORT"
        )


def wait_for_port(port: int, *, timeout: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_in_use(port):
            return
        time.sleep(0.05)
    raise TopologyError(f"{what} did not start listening on port {port} in {timeout:.0f} s"
                        f"{log_tail(log)}")


def read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    return pid if alive(pid) else None  # an exited process not yet reaped is not running


def stop_pid(pidfile: Path, *, timeout: float = 15.0, sig: int = signal.SIGTERM) -> bool:
    """Stop the process named by a pid file; SIGKILL after the timeout. True if one was running."""
    pid = read_pid(pidfile)
    if pid is None:
        return False
    os.kill(pid, sig)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(pidfile) is None or not alive(pid):
            return True
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child still answers kill(0); reap it if it is ours.
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        pass
    # Someone else's zombie (a process `up` started, reparented to an init that reaps late)
    # has exited too: its state in /proc is Z.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat_fields(stat)[0] != "Z"


def spawn(argv: Sequence[str], *, pidfile: Path, log: Path, cwd: Path,
          env: dict[str, str] | None = None) -> int:
    """Start a process that stays in the foreground (etcd, Patroni) in its own session, its
    output appended to `log`, its pid written to `pidfile` so `down` finds it again.

    `cwd`: a folder the process's user can enter. Started from a checkout that user cannot
    enter (a clone in root's mode-700 temporary folder), Patroni's multiprocessing children
    fail at their `chdir` back to it and the cluster never bootstraps."""
    with log.open("ab") as handle:
        child = subprocess.Popen(
            list(argv), stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=env, cwd=cwd,
        )
    pidfile.write_text(f"{child.pid}\n")
    return child.pid


def stop_all(pidfiles: Sequence[Path], *, timeout: float = 60.0) -> bool:
    """SIGTERM every process named by the pid files at once, then wait for each (SIGKILL after
    the timeout). True if any was running."""
    running = [pidfile for pidfile in pidfiles if read_pid(pidfile) is not None]
    for pidfile in running:
        pid = read_pid(pidfile)
        if pid is not None:
            os.kill(pid, signal.SIGTERM)
    for pidfile in running:
        stop_pid(pidfile, timeout=timeout)
    return bool(running)


def children(pid: int) -> list[int]:
    """The direct children of a process, from /proc."""
    found = []
    for entry in proc_stats():
        fields = stat_fields(entry[1])
        if len(fields) > 2 and fields[1] == str(pid):
            found.append(entry[0])
    return found


def stat_fields(stat: str) -> list[str]:
    """The fields of a /proc/<pid>/stat text after the command name (which may hold spaces and
    parentheses): state [0], parent pid [1], user and system time [11] [12], and those of the
    reaped children [13] [14], in clock ticks."""
    return stat.rsplit(")", 1)[-1].split()


def proc_stats() -> Iterator[tuple[int, str]]:
    """(pid, the text of /proc/<pid>/stat) of every process, skipping those that exit meanwhile."""
    for path in Path("/proc").glob("[0-9]*/stat"):
        try:
            yield int(path.parent.name), path.read_text()
        except (OSError, ValueError):
            continue
