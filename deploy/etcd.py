"""The 3-member etcd cluster that Patroni keeps its leader keys and configuration in.

Three members on loopback (ports in layout.py), each with its own data folder, run as the `etcd`
user Debian's `etcd-server` package creates (as root; as ourselves otherwise). The packaged
etcd.service is never used: deploy/setup.sh disables it. Three members tolerate the loss of one;
losing two loses quorum, which Patroni's failsafe mode rides out (README, "High availability").
"""

from __future__ import annotations

import json
import os
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

from deploy import processes as proc
from deploy.layout import LocalLayout
from deploy.processes import TopologyError

ETCD_USER = "etcd"


class EtcdControl:
    layout: LocalLayout
    echo: Callable[[str], None]

    @property
    def etcd_dir(self) -> Path:
        return self.layout.root / "etcd"

    def etcd_hosts(self) -> str:
        return ",".join(f"127.0.0.1:{client}" for client, _ in self.layout.etcd_ports())

    def etcd_member_dir(self, index: int) -> Path:
        return self.etcd_dir / f"e{index}"

    def _etcd_argv(self, index: int) -> list[str]:
        ports = self.layout.etcd_ports()
        client, peer = ports[index]
        cluster = ",".join(f"e{i}=http://127.0.0.1:{p}" for i, (_, p) in enumerate(ports))
        argv = [
            proc.require_binary("etcd", "etcd-server"),
            "--name", f"e{index}",
            "--data-dir", str(self.etcd_member_dir(index) / "data"),
            "--listen-client-urls", f"http://127.0.0.1:{client}",
            "--advertise-client-urls", f"http://127.0.0.1:{client}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", cluster,
            # Ignored once a member has data: a restart rejoins the cluster it was part of.
            "--initial-cluster-state", "new",
            # A token per topology: members of two topologies never join each other.
            "--initial-cluster-token", f"shardsvc-{self.layout.base_port}",
            # Warnings and errors only: an idle member otherwise logs every heartbeat setting.
            "--log-level", "warn",
        ]
        return proc.exec_as_user(ETCD_USER, argv)

    def ensure_etcd(self) -> None:
        proc.make_dir(self.etcd_dir)
        for index, (client, peer) in enumerate(self.layout.etcd_ports()):
            folder = proc.make_dir(self.etcd_member_dir(index))
            if os.geteuid() == 0:
                # etcd refuses a data folder others can read; only its user may enter it.
                folder.chmod(0o700)
                proc.chown_to(folder, ETCD_USER)
            if proc.read_pid(folder / "etcd.pid") is not None:
                continue
            proc.require_free_port(client, f"etcd e{index} (clients)")
            proc.require_free_port(peer, f"etcd e{index} (peers)")
            proc.spawn(self._etcd_argv(index), pidfile=folder / "etcd.pid",
                       log=self.etcd_dir / f"e{index}.log", cwd=folder)
        self.wait_etcd_healthy(timeout=30)

    def etcd_health(self, index: int) -> bool:
        client, _ = self.layout.etcd_ports()[index]
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{client}/health", timeout=1) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError):
            return False

    def wait_etcd_healthy(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(self.etcd_health(i) for i in range(len(self.layout.etcd_ports()))):
                return
            time.sleep(0.2)
        raise TopologyError(f"etcd did not become healthy within {timeout:.0f} s"
                            f"{proc.log_tail(self.etcd_dir / 'e0.log')}")

    def stop_etcd_member(self, index: int) -> bool:
        return proc.stop_pid(self.etcd_member_dir(index) / "etcd.pid")

    def start_etcd_member(self, index: int) -> None:
        """Start one stopped member again (tests: losing and regaining one member)."""
        folder = self.etcd_member_dir(index)
        if proc.read_pid(folder / "etcd.pid") is None:
            proc.spawn(self._etcd_argv(index), pidfile=folder / "etcd.pid",
                       log=self.etcd_dir / f"e{index}.log", cwd=folder)

    def stop_etcd(self) -> bool:
        """Stop every member at once, killing any still running after 3 s: members stopping
        together wait out leader elections for each other (9 s measured), and a kill loses
        nothing (etcd writes a change to its WAL before acknowledging it), which Patroni, the
        only client, no longer needs once stopped."""
        return proc.stop_all([self.etcd_member_dir(i) / "etcd.pid"
                              for i in range(len(self.layout.etcd_ports()))], timeout=3)

    def etcd_status_rows(self) -> Iterator[dict[str, str]]:
        for index, (client, _) in enumerate(self.layout.etcd_ports()):
            running = proc.read_pid(self.etcd_member_dir(index) / "etcd.pid") is not None
            healthy = running and self.etcd_health(index)
            yield {"component": "etcd", "name": f"e{index}", "port": str(client),
                   "state": "running" if running else "stopped",
                   "detail": "healthy" if healthy else ("unhealthy" if running else "")}
