"""The private network of the local app hosts: one Linux network namespace per app host, each
joined by a veth pair to a bridge in the root namespace.

The bridge holds the gateway address (.1), where PgBouncer and Redis also listen, so an app
host reaches them over the network as it would from another machine; app host i has .(10+i).
The /24 is derived from the base port (10.<base // 256>.<base % 256>.0/24), so topologies on
other base ports never share addresses, names or routes. Needs root (`ip netns`, `ip link`).
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import subprocess
from dataclasses import dataclass

from deploy import processes as proc
from deploy.processes import TopologyError

FIRST_HOST = 11


@dataclass(frozen=True)
class AppNetwork:
    base_port: int

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(
            f"10.{self.base_port // 256}.{self.base_port % 256}.0/24"
        )

    @property
    def gateway(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def bridge(self) -> str:
        return f"ssvc{self.base_port}"  # interface names are at most 15 characters

    def namespace(self, index: int) -> str:
        return f"ssvc{self.base_port}-app{index}"

    def address(self, index: int) -> str:
        return str(self.subnet.network_address + FIRST_HOST + index - 1)

    def _veth(self, index: int) -> str:
        return f"sv{self.base_port}a{index}"

    # ----- inspection
    def bridge_exists(self) -> bool:
        return _ip("link", "show", self.bridge, check=False).returncode == 0

    def namespaces(self) -> list[str]:
        if shutil.which("ip") is None:
            return []  # no iproute2: nothing can have been made
        listing = _ip("netns", "list", check=False).stdout
        prefix = f"ssvc{self.base_port}-app"
        return sorted(
            line.split()[0] for line in listing.splitlines() if line.startswith(prefix)
        )

    # ----- creation, removal
    def ensure_bridge(self) -> None:
        require_root()
        if not self.bridge_exists():
            _ip("link", "add", self.bridge, "type", "bridge")
            _ip("addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev", self.bridge)
        _ip("link", "set", self.bridge, "up")

    def ensure_host(self, index: int) -> None:
        """The namespace of app host `index` (1-based), its veth pair and its address."""
        self.ensure_bridge()
        ns, veth = self.namespace(index), self._veth(index)
        if ns in self.namespaces():
            return
        _ip("netns", "add", ns)
        _ip("link", "add", veth, "type", "veth", "peer", "name", f"{veth}p")
        _ip("link", "set", f"{veth}p", "netns", ns)
        _ip("link", "set", veth, "master", self.bridge)
        _ip("link", "set", veth, "up")
        _ip("-n", ns, "link", "set", f"{veth}p", "name", "eth0")
        _ip("-n", ns, "addr", "add", f"{self.address(index)}/{self.subnet.prefixlen}",
            "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", ns, "route", "add", "default", "via", self.gateway)

    def remove(self) -> None:
        """Every namespace, veth pair and the bridge of this network; harmless when absent."""
        if os.geteuid() != 0:
            return
        for ns in self.namespaces():
            _ip("netns", "del", ns, check=False)  # its veth end goes with it, and the pair
        if self.bridge_exists():
            _ip("link", "del", self.bridge, check=False)

    def exec_prefix(self, index: int) -> list[str]:
        """Run a command inside app host `index`'s namespace."""
        return [proc.require_binary("ip", "iproute2"), "netns", "exec", self.namespace(index)]


def require_root() -> None:
    if os.geteuid() != 0:
        raise TopologyError(
            "app hosts in network namespaces need root (ip netns, ip link); run as root or "
            "leave out --app-hosts for one service on loopback"
        )


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [proc.require_binary("ip", "iproute2"), *args], capture_output=True, text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise TopologyError(f"ip {' '.join(args)} failed: {result.stderr.strip()}")
    return result
