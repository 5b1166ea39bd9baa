"""nginx in front of the app hosts, and the app hosts themselves.

`EdgeControl` is part of LocalTopology (it needs the layout and the service control). With
`app_hosts = 0` one service listens on loopback behind nginx; with N it runs N app hosts, each a
Gunicorn in its own network namespace on its own address (deploy/app_network.py).

nginx's configuration is deploy/nginx/nginx.conf.template with its snippets; the list of app
hosts (its upstream) is written separately, so draining a host is a rewrite and a graceful
reload. The topology file's `[edge]` and `[[app_hosts]]` tables describe the same, for real
hosts as well as local ones.
"""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from deploy import processes as proc
from deploy.app_network import AppNetwork
from deploy.demo import demo_dir, demo_port
from deploy.layout import PROJECT_DIR, LocalLayout
from deploy.processes import TopologyError
from deploy.services import ServiceProcess

NGINX_DIR = PROJECT_DIR / "deploy" / "nginx"
# nginx runs as this unprivileged user when we are root (Debian's web server user).
EDGE_USER = os.environ.get("SHARDSVC_EDGE_USER", "www-data")
# Passive health check: one failed connection takes a host out of rotation for this long, then
# nginx tries it again with one request (which, refused, goes on to the next host).
FAIL_TIMEOUT_SECONDS = 5
# Below Gunicorn's own keep-alive (5 s, deploy/gunicorn.conf.py): nginx closes an idle upstream
# connection before Gunicorn does, so it never sends a request on one being closed.
UPSTREAM_KEEPALIVE_TIMEOUT = "4s"


@dataclass(frozen=True)
class AppHost:
    name: str
    index: int  # 0: the loopback service; 1..N: a namespace
    address: str
    port: int

    @property
    def upstream(self) -> str:
        return f"{self.address}:{self.port}"


class EdgeControl:
    layout: LocalLayout
    echo: Callable[[str], None]
    start_service: Callable[..., ServiceProcess]
    manage: Callable[..., str]

    @property
    def network(self) -> AppNetwork:
        return AppNetwork(self.layout.base_port)

    @property
    def edge_dir(self) -> Path:
        return self.layout.root / "nginx"

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.layout.edge_port}"

    @property
    def static_root(self) -> Path:
        return self.layout.root / "static"

    def service_address(self) -> str:
        """Where the app reaches PgBouncer and Redis: the bridge's gateway when app hosts run in
        namespaces, loopback otherwise."""
        return self.network.gateway if self.layout.app_hosts else "127.0.0.1"

    def app_hosts(self) -> list[AppHost]:
        port = self.layout.http_port
        if not self.layout.app_hosts:
            return [AppHost("service", 0, "127.0.0.1", port)]
        return [
            AppHost(f"app_{i}", i, self.network.address(i), port)
            for i in range(1, self.layout.app_hosts + 1)
        ]

    def app_service(self, host: AppHost) -> ServiceProcess:
        return ServiceProcess(self.layout.root / host.name, host.port, host.address)

    def topology_file_edge_lines(self) -> list[str]:
        lines = [
            "# nginx and the app hosts behind it: read by deploy/edge.py, not by the service.",
            "[edge]",
            f'listen = "127.0.0.1:{self.layout.edge_port}"',
            "",
        ]
        for host in self.app_hosts():
            lines += ["[[app_hosts]]", f'name = "{host.name}"', f'address = "{host.upstream}"', ""]
        return lines

    # ----- static files
    def collectstatic(self) -> None:
        # Old hashed files stay (no --clear): pages an app host still running the previous
        # version serves refer to them during a rolling deploy.
        self.manage("collectstatic", "--noinput", SHARDSVC_STATIC_ROOT=str(self.static_root))

    # ----- app hosts
    def start_app_hosts(self, **env: str) -> list[ServiceProcess]:
        return [self.start_app_host(host, **env) for host in self.app_hosts()]

    def start_app_host(self, host: AppHost, **env: str) -> ServiceProcess:
        proxy = self.network.gateway if host.index else "127.0.0.1"
        env = {
            # nginx connects from here: its X-Real-IP names the client (project/proxy.py).
            "SHARDSVC_TRUSTED_PROXIES": f"{proxy}/32",
            "SHARDSVC_ALLOWED_HOSTS": f"127.0.0.1,localhost,{host.address}",
            # Prometheus and the manager reach an app host from the bridge's address.
            "SHARDSVC_METRICS_ALLOW": f"127.0.0.0/8,::1/128,{proxy}/32",
            **env,
        }
        prefix: list[str] = []
        if host.index:
            self.network.ensure_host(host.index)
            prefix = self.network.exec_prefix(host.index)
        return self.start_service(name=host.name, port=host.port, host=host.address,
                                  prefix=prefix, **env)

    def wait_app_host_ready(self, host: AppHost, *, timeout: float = 60) -> None:
        service = self.app_service(host)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if service.ready():
                return
            time.sleep(0.2)
        raise TopologyError(f"{host.name} did not answer /readyz 200 within {timeout:.0f} s"
                            f"{proc.log_tail(service.log, 40)}")

    def restart_app_hosts_rolling(self, *, drain_seconds: float = 1.0) -> None:
        """Restart every app host, one at a time, while nginx sends traffic to the others:
        take it out of rotation (graceful nginx reload), let its requests finish, stop it
        gracefully, start it (new code, new settings), wait for /readyz, put it back."""
        hosts = self.app_hosts()
        if len(hosts) < 2:
            self.echo("one app host: clients see errors while it restarts (use --app-hosts 2+)")
        for host in hosts:
            service = self.app_service(host)
            env, _prefix = service.start_settings()
            if len(hosts) > 1:
                self.write_upstream(drained={host.name})
                self.reload_edge()
                time.sleep(drain_seconds)
            self.echo(f"restarting {host.name}")
            service.stop()
            self.start_app_host(host, **env)
            self.wait_app_host_ready(host)
            self.write_upstream(drained=set())
            self.reload_edge()

    def stop_app_host(self, host: AppHost, *, kill: bool = False) -> None:
        """Stop one app host: gracefully, or with SIGKILL to the master and its workers, as a
        crashed machine would go."""
        service = self.app_service(host)
        if not kill:
            service.stop()
            return
        pid = proc.read_pid(service.pidfile)
        if pid is None:
            return
        for child in proc.children(pid):
            os.kill(child, signal.SIGKILL)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while proc.alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        service.pidfile.unlink(missing_ok=True)  # a killed master leaves its pid file behind

    # ----- nginx
    def edge_config(self) -> str:
        values = {
            "dir": str(self.edge_dir),
            # Copies in the topology folder: nginx's user may not be able to enter the checkout
            # (a clone under a private folder), only the topology folder, which is checked.
            "snippets": str(self.edge_dir / "snippets"),
            "listen": f"127.0.0.1:{self.layout.edge_port}",
            "static_root": str(self.static_root),
            "demo_listen": f"127.0.0.1:{demo_port(self.layout)}",
            "demo_root": str(demo_dir(self.layout)),
        }
        text = (NGINX_DIR / "nginx.conf.template").read_text()
        for key, value in values.items():
            text = text.replace(f"@{key}@", value)
        left = re.findall(r"@[a-z_]+@", text)
        if left:
            raise TopologyError(f"nginx.conf.template: no value for {', '.join(sorted(left))}")
        return text

    def upstream_config(self, drained: set[str]) -> str:
        lines = ["# Written by deploy/edge.py: the app hosts; `down` = drained for a restart.",
                 "upstream shardsvc_app {"]
        for host in self.app_hosts():
            mark = " down" if host.name in drained else ""
            lines.append(f"    server {host.upstream} max_fails=1 "
                         f"fail_timeout={FAIL_TIMEOUT_SECONDS}s{mark};")
        lines += [
            "    # Idle connections kept open to the app hosts, per nginx worker.",
            "    keepalive 32;",
            f"    keepalive_timeout {UPSTREAM_KEEPALIVE_TIMEOUT};",
            "}",
            "",
        ]
        return "\n".join(lines)

    def write_upstream(self, *, drained: set[str]) -> None:
        _write(self.edge_dir / "upstream.conf", self.upstream_config(drained))

    def _nginx(self, *args: str) -> list[str]:
        binary = proc.require_binary("nginx", "nginx")
        return proc.as_user(EDGE_USER, [
            binary, "-p", str(self.edge_dir), "-c", str(self.edge_dir / "nginx.conf"),
            "-e", str(self.edge_dir / "error.log"), *args,
        ])

    def ensure_edge(self) -> None:
        """Write nginx's configuration and start it, or reload it when it runs."""
        proc.require_binary("nginx", "nginx")
        folder = proc.make_dir(self.edge_dir)
        for sub in ("tmp", "cache", "snippets"):
            proc.make_dir(folder / sub)
        for snippet in sorted(NGINX_DIR.glob("*.conf")):
            _write(folder / "snippets" / snippet.name, snippet.read_text())
        proc.make_dir(demo_dir(self.layout))
        _write(folder / "nginx.conf", self.edge_config())
        self.write_upstream(drained=set())
        if os.geteuid() == 0:
            proc.check_reachable_by_service_user(self.layout.root, user=EDGE_USER)
            for path in (folder, folder / "tmp", folder / "cache"):
                proc.chown_to(path, EDGE_USER)
        proc.run(self._nginx("-t", "-q"), what="checking the nginx configuration",
                 log=folder / "error.log")
        if self.edge_pid() is not None:
            self.reload_edge()
            return
        proc.require_free_port(self.layout.edge_port, "nginx")
        proc.run(self._nginx(), what="starting nginx", log=folder / "error.log")
        proc.wait_for_port(self.layout.edge_port, timeout=10, what="nginx",
                           log=folder / "error.log")
        self.echo(f"nginx: {self.edge_url}/ (logs in {folder})")

    def edge_pid(self) -> int | None:
        return proc.read_pid(self.edge_dir / "nginx.pid")

    def reload_edge(self) -> None:
        """Graceful reload: new workers take the new upstream list, old ones finish their
        requests and exit. Returns once only new workers are left."""
        master = self.edge_pid()
        if master is None:
            return
        old = set(proc.children(master))
        os.kill(master, signal.SIGHUP)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = set(proc.children(master))
            if now and not now & old:
                return
            time.sleep(0.05)
        raise TopologyError(f"nginx did not finish reloading in 30 s"
                            f"{proc.log_tail(self.edge_dir / 'error.log')}")

    def stop_edge(self) -> bool:
        # SIGQUIT: graceful shutdown (SIGTERM would drop requests in flight).
        return proc.stop_pid(self.edge_dir / "nginx.pid", timeout=15, sig=signal.SIGQUIT)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(path)  # nginx never reads half a file
