"""PgBouncer and Redis of the local topology.

PgBouncer has one database entry per server, named by its alias, and in the highly available
topology one per cluster, named by the cluster, for whichever member leads it now: the leader
follower (deploy/leader_follower.py) rewrites that entry and reloads PgBouncer when Patroni
elects another leader.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Callable
from pathlib import Path

from deploy import processes as proc
from deploy.layout import ADMIN_USER, APP_DB, APP_USER, PROJECT_DIR, LocalLayout


class PoolerControl:
    layout: LocalLayout
    echo: Callable[[str], None]
    service_address: Callable[[], str]
    _write_as_service_user: Callable[[Path, str], None]

    @property
    def pgbouncer_dir(self) -> Path:
        return self.layout.root / "pgbouncer"

    def listen_addresses(self) -> str:
        """Where PgBouncer and Redis listen: loopback, and the app hosts' gateway if any."""
        address = self.service_address()
        return "127.0.0.1" if address == "127.0.0.1" else f"127.0.0.1,{address}"

    @property
    def leaders_file(self) -> Path:
        """Highly available topology: the member that leads each cluster, as PgBouncer was
        last pointed (written by the leader follower; kept so `up` never points it back)."""
        return self.pgbouncer_dir / "leaders.json"

    def pgbouncer_leaders(self) -> dict[str, str]:
        """Cluster -> the member alias PgBouncer's cluster entry points at."""
        known = {node.alias for node in self.layout.nodes()}
        saved = json.loads(self.leaders_file.read_text()) if self.leaders_file.exists() else {}
        leaders = {node.cluster: node.alias for node in self.layout.nodes()
                   if node.role == "primary"}
        leaders.update({c: a for c, a in saved.items() if a in known and c in leaders})
        return leaders

    def pgbouncer_config(self, leaders: dict[str, str] | None = None) -> str:
        ports = {node.alias: node.port for node in self.layout.nodes()}
        databases = "".join(f"{alias} = host=127.0.0.1 port={port} dbname={APP_DB}\n"
                            for alias, port in ports.items())
        if self.layout.ha:
            leaders = leaders or self.pgbouncer_leaders()
            databases += "".join(
                f"{cluster} = host=127.0.0.1 port={ports[alias]} dbname={APP_DB}\n"
                for cluster, alias in leaders.items())
        template = (PROJECT_DIR / "deploy" / "pgbouncer.ini.template").read_text()
        return template.format(
            databases=databases,
            port=self.layout.pgbouncer_port,
            listen_addr=self.listen_addresses(),
            dir=self.pgbouncer_dir,
            admin_user=ADMIN_USER,
        )

    def _ensure_pgbouncer(self) -> None:
        folder = proc.make_dir(self.pgbouncer_dir, service_owned=True)
        ini = folder / "pgbouncer.ini"
        self._write_as_service_user(ini, self.pgbouncer_config())
        # trust auth still needs the user names listed.
        self._write_as_service_user(
            folder / "userlist.txt", f'"{APP_USER}" ""\n"{ADMIN_USER}" ""\n'
        )
        pid = proc.read_pid(folder / "pgbouncer.pid")
        listening = folder / "listen_addr"
        # Started before the file was kept: it listens on loopback only.
        current = listening.read_text() if listening.exists() else "127.0.0.1"
        if pid is not None and current != self.listen_addresses():
            # A reload does not change where PgBouncer listens; a restart does.
            proc.stop_pid(folder / "pgbouncer.pid")
            pid = None
        if pid is not None:
            os.kill(pid, signal.SIGHUP)  # reload: picks up new shards
            return
        listening.write_text(self.listen_addresses())
        proc.require_free_port(self.layout.pgbouncer_port, "PgBouncer")
        proc.run(
            proc.as_service_user(["pgbouncer", "-d", str(ini)]),
            what="starting PgBouncer",
            log=folder / "pgbouncer.log",
        )
        proc.wait_for_port(
            self.layout.pgbouncer_port, timeout=10, what="PgBouncer", log=folder / "pgbouncer.log"
        )

    @property
    def redis_dir(self) -> Path:
        return self.layout.root / "redis"

    def _ensure_redis(self) -> None:
        folder = proc.make_dir(self.redis_dir)
        bind = self.listen_addresses().replace(",", " ")
        listening = folder / "bind"
        if proc.read_pid(folder / "redis.pid") is not None:
            if (listening.read_text() if listening.exists() else "127.0.0.1") == bind:
                return
            proc.stop_pid(folder / "redis.pid")  # a cache without persistence: nothing lost
        listening.write_text(bind)
        proc.require_free_port(self.layout.redis_port, "Redis")
        proc.run(
            [
                proc.require_binary("redis-server", "redis-server"),
                "--port", str(self.layout.redis_port),
                "--bind", *bind.split(),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "yes",
                "--dir", str(folder),
                "--pidfile", str(folder / "redis.pid"),
                "--logfile", str(folder / "redis.log"),
            ],
            what="starting Redis",
            log=folder / "redis.log",
        )
        proc.wait_for_port(
            self.layout.redis_port, timeout=10, what="Redis", log=folder / "redis.log"
        )

    def repoint_pgbouncer(self, leaders: dict[str, str]) -> None:
        """Point each cluster's entry at the member that leads it and reload PgBouncer.

        A reload with a changed entry makes PgBouncer close that entry's server connections as
        they are released and open new ones to the new address: clients keep their client
        connections, and a transaction in flight on the old leader fails as it would anyway."""
        folder = self.pgbouncer_dir
        tmp = self.leaders_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(leaders, sort_keys=True) + "\n")
        tmp.replace(self.leaders_file)
        self._write_as_service_user(folder / "pgbouncer.ini", self.pgbouncer_config(leaders))
        pid = proc.read_pid(folder / "pgbouncer.pid")
        if pid is not None:
            os.kill(pid, signal.SIGHUP)
