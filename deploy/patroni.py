"""Every cluster under Patroni: its members' configs, starting and stopping them, who leads.

One Patroni per member (deploy/patroni.yml.template, commented), all sharing the topology's etcd
(deploy/etcd.py). Patroni runs PostgreSQL itself (initdb of the first member, pg_basebackup of
the others, promotion, pg_rewind of a failed leader), as the database user. Patroni comes from
PyPI, pinned in pyproject.toml (the `ha` extra), in a virtualenv of its own that setup.sh makes
with the system Python: the database user must be able to run it, which it cannot when the
project's virtualenv lives under a private home folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from deploy import processes as proc
from deploy.layout import ADMIN_USER, APP_DB, APP_USER, PG_BINDIR, PROJECT_DIR, LocalLayout, Node
from deploy.processes import TopologyError
from shards import patroni

PATRONI_VENV = Path(os.environ.get("SHARDSVC_PATRONI_VENV", "/opt/shardsvc-patroni"))
PATRONI_BIN = PATRONI_VENV / "bin" / "patroni"
PATRONI_PYTHON = PATRONI_VENV / "bin" / "python"
# Patroni, started with two of its waits in a switchover shortened (deploy/patroni_launch.py,
# which says why): the launcher's text, run with `python -c` by the database user.
PATRONI_LAUNCHER = (PROJECT_DIR / "deploy" / "patroni_launch.py").read_text()


class PatroniControl:
    layout: LocalLayout
    echo: Callable[[str], None]
    etcd_hosts: Callable[[], str]
    pg_parameters: Callable[[], dict[str, str]]
    node: Callable[[str], Node]
    _write_as_service_user: Callable[[Path, str], None]
    _provision: Callable[[Node], None]

    # ----- configuration
    @staticmethod
    def rest_url(node: Node) -> str:
        return f"http://127.0.0.1:{node.rest_port}"

    def member_urls(self, cluster: str) -> list[str]:
        return [self.rest_url(node) for node in self.layout.members(cluster)]

    def patroni_config(self, node: Node) -> str:
        template = (PROJECT_DIR / "deploy" / "patroni.yml.template").read_text()
        return template.format(
            scope=node.cluster,
            name=node.alias,
            rest_port=node.rest_port,
            etcd_hosts=self.etcd_hosts(),
            # The same on every member of a cluster; Patroni sets port and listen_addresses.
            dcs_parameters=_yaml_map(self.pg_parameters(), indent=8),
            initdb_extra="" if self.layout.durable else "    - no-sync\n",
            port=node.port,
            data_dir=node.datadir,
            bin_dir=PG_BINDIR,
            member_dir=node.datadir.parent,
            admin_user=ADMIN_USER,
            app_user=APP_USER,
            app_db=APP_DB,
        )

    def _patroni_argv(self, node: Node) -> list[str]:
        return proc.exec_as_user(proc.service_user(),
                                 [str(PATRONI_PYTHON), "-c", PATRONI_LAUNCHER,
                                  str(node.datadir.parent / "patroni.yml")])

    def _require_patroni(self) -> None:
        check = subprocess.run(proc.as_service_user([str(PATRONI_BIN), "--version"]),
                               capture_output=True, text=True, check=False, cwd="/")
        if check.returncode != 0:
            raise TopologyError(
                f"{PATRONI_BIN} does not run as user {proc.service_user()!r} "
                f"({(check.stderr or check.stdout).strip()[-300:]}); run `bash deploy/setup.sh "
                "--deps-only` (it installs Patroni there), set SHARDSVC_PATRONI_VENV to a "
                "virtualenv with Patroni that the database user can run, or use `up --plain`")

    # ----- start
    def ensure_patroni(self) -> None:
        """Start every member; the first member of a new cluster first, alone, so that it is
        the one that runs initdb and the others clone it."""
        self._require_patroni()
        for node in self.layout.nodes():
            self._write_member_files(node)
        fresh = [c for c in self.layout.cluster_names
                 if not any((n.datadir / "PG_VERSION").exists() for n in self.layout.members(c))]
        for cluster in fresh:
            self._start_member(self.layout.members(cluster)[0])
        for cluster in fresh:
            self.wait_leader(cluster, timeout=90)
        for node in self.layout.nodes():
            self._start_member(node)
        for cluster in self.layout.cluster_names:
            self.wait_cluster_streaming(cluster, timeout=120)
            # The app role and database, on whichever member leads (the others replicate them).
            self._provision(self.leader(cluster))

    def _write_member_files(self, node: Node) -> None:
        folder = proc.make_dir(node.datadir.parent, service_owned=True)
        self._write_as_service_user(folder / "patroni.yml", self.patroni_config(node))

    def _start_member(self, node: Node) -> None:
        folder = node.datadir.parent
        if proc.read_pid(folder / "patroni.pid") is not None:
            return
        proc.require_free_port(node.port, f"PostgreSQL {node.alias}")
        assert node.rest_port is not None
        proc.require_free_port(node.rest_port, f"Patroni REST of {node.alias}")
        env = {**os.environ, "HOME": str(folder)}
        proc.spawn(self._patroni_argv(node), pidfile=folder / "patroni.pid",
                   log=folder / "patroni.log", cwd=folder, env=env)

    def start_member(self, alias: str) -> None:
        """Start one member's Patroni again (after a test stopped or killed it)."""
        self._start_member(self.node(alias))

    def wait_leader(self, cluster: str, *, timeout: float) -> Node:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            url = patroni.find_leader(self.member_urls(cluster))
            if url is not None:
                return self._node_by_url(url)
            time.sleep(0.2)
        first = self.layout.members(cluster)[0]
        raise TopologyError(f"no leader for {cluster} within {timeout:.0f} s"
                            f"{proc.log_tail(first.datadir.parent / 'patroni.log', 30)}")

    def wait_cluster_streaming(self, cluster: str, *, timeout: float) -> None:
        """Every member runs: the leader, the others streaming from it, one of them the
        synchronous standby (so the first acknowledged write already has two copies)."""
        want = len(self.layout.members(cluster))
        deadline = time.monotonic() + timeout
        members: list[dict] = []
        while time.monotonic() < deadline:
            try:
                members = patroni.cluster_members(self.member_urls(cluster), timeout=1)
            except patroni.PatroniError:
                members = []
            leaders = [m for m in members if m.get("role") in patroni.LEADER_ROLES
                       and m.get("state") == "running"]
            streaming = [m for m in members if m.get("state") == "streaming"]
            sync = [m for m in members if m.get("role") == "sync_standby"]
            if len(members) == want and len(leaders) == 1 and len(streaming) == want - 1 and (
                    want == 1 or sync):
                return
            time.sleep(0.2)
        raise TopologyError(f"{cluster} did not reach one leader and {want - 1} streaming "
                            f"member(s) within {timeout:.0f} s: {members}")

    def leader(self, cluster: str) -> Node:
        url = patroni.find_leader(self.member_urls(cluster))
        if url is None:
            raise TopologyError(f"no member of {cluster} leads now (Patroni's /primary)")
        return self._node_by_url(url)

    def _node_by_url(self, url: str) -> Node:
        return next(n for n in self.layout.nodes() if self.rest_url(n) == url)

    # ----- faults (tests) and stop
    def kill_postmaster(self, node: Node) -> int:
        """kill -9 the member's postmaster (its Patroni stays up): the fault Patroni fails over
        on with primary_start_timeout 0. Returns the pid killed."""
        pid = int((node.datadir / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        return pid

    def stop_member(self, alias: str, *, sig: int = signal.SIGTERM) -> bool:
        """Stop one member's Patroni (SIGTERM: it stops PostgreSQL first and hands the leader
        role over; SIGKILL: the member is lost whole, its PostgreSQL keeps running alone)."""
        return proc.stop_pid(self.node(alias).datadir.parent / "patroni.pid", timeout=60,
                             sig=sig)

    def stop_patroni(self) -> bool:
        """Stop every member, the ones that do not lead first: a leader stopped first would
        hand its role to a member about to stop, for nothing."""
        nodes = self.layout.nodes()
        leaders = set()
        for cluster in self.layout.cluster_names:
            url = patroni.find_leader(self.member_urls(cluster))
            if url is not None:
                leaders.add(url)
        stopped = False
        for batch in ([n for n in nodes if self.rest_url(n) not in leaders],
                      [n for n in nodes if self.rest_url(n) in leaders]):
            stopped = proc.stop_all([n.datadir.parent / "patroni.pid" for n in batch]) or stopped
        return stopped

    # ----- the leader follower
    @property
    def follower_pidfile(self) -> Path:
        return self.layout.root / "pgbouncer" / "follower.pid"

    def ensure_follower(self) -> None:
        if proc.read_pid(self.follower_pidfile) is not None:
            return
        env = {**os.environ, "PYTHONPATH": str(PROJECT_DIR)}
        proc.spawn([sys.executable, "-m", "deploy.leader_follower", str(self.layout.root)],
                   pidfile=self.follower_pidfile,
                   log=self.layout.root / "pgbouncer" / "follower.log", cwd=self.layout.root,
                   env=env)

    def stop_follower(self) -> bool:
        return proc.stop_pid(self.follower_pidfile)

    # ----- status
    def patroni_status_rows(self) -> Iterator[dict[str, str]]:
        for cluster in self.layout.cluster_names:
            try:
                members = {m["name"]: m for m in patroni.cluster_members(
                    self.member_urls(cluster), timeout=1)}
            except patroni.PatroniError:
                members = {}
            for node in self.layout.members(cluster):
                member = members.get(node.alias, {})
                running = proc.read_pid(node.datadir.parent / "patroni.pid") is not None
                lag = member.get("lag")
                detail = (f"{member.get('role', '?')}, {member.get('state', '?')}, timeline "
                          f"{member.get('timeline', '?')}"
                          + (f", lag {lag} bytes" if lag not in (None, "") else ""))
                yield {"component": "patroni", "name": node.alias,
                       "port": f"{node.port} (REST {node.rest_port})",
                       "state": "running" if running else "stopped",
                       "detail": detail if member else ""}
        yield {"component": "follower", "name": "leader-follower", "port": "-",
               "state": "running" if proc.read_pid(self.follower_pidfile) else "stopped",
               "detail": "points PgBouncer's cluster entries at Patroni's leaders"}


def _yaml_map(values: dict[str, str], *, indent: int) -> str:
    """postgresql.conf values (already quoted where PostgreSQL needs it) as a YAML mapping."""
    pad = " " * indent
    lines = []
    for key, value in values.items():
        quoted = value if value.startswith("'") else f"'{value}'"
        lines.append(f"{pad}{key}: {quoted}")
    return "\n".join(lines)
