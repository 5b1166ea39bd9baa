"""The real-topology test harness.

One throwaway topology per test session: PostgreSQL primaries with streaming replicas,
PgBouncer in transaction mode and Redis, started by the project's own manager in a temporary
folder on ports of its own (never the ones `up` uses), migrated, and destroyed at the end, also
when tests fail. Django's test-database creation is not used: it cannot create databases through
PgBouncer, so the harness provisions real databases instead and tests clean up what they write.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deploy.layout import HA_SPAN
from deploy.processes import port_in_use
from deploy.topology import LocalLayout, LocalTopology, ServiceProcess
from tests.api_client import UNREACHED_THROTTLES

# A non-UTC server default, so a test can tell whether the app set UTC on its connections.
SERVER_TIME_ZONE = "Pacific/Chatham"
PORTS_PER_TOPOLOGY = 40


_port_locks: list[object] = []


def free_base_port(start: int, span: int = PORTS_PER_TOPOLOGY) -> int:
    """The first block of ports at or after `start` where nothing listens on its first `span`
    ports and that no other test process has claimed. The claim is an flock held until this
    process exits: two test runs on one machine choose their ports before either starts a
    server. Blocks are 100 apart, so a highly available topology (span 100: etcd and Patroni
    above base+40, deploy/layout.py) never overlaps another block's ports."""
    lock_dir = Path(tempfile.gettempdir()) / "shardsvc-port-locks"
    lock_dir.mkdir(exist_ok=True)
    for base in range(start, 60000, 100):
        handle = (lock_dir / f"{base}.lock").open("w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        if any(port_in_use(port) for port in range(base, base + span)):
            handle.close()
            continue
        _port_locks.append(handle)
        return base
    raise RuntimeError(f"no free block of {PORTS_PER_TOPOLOGY} ports from {start}")


def make_topology(prefix: str, *, shards: int = 2, replicas: int = 1,
                  start_port: int | None = None, ha: bool = False) -> LocalTopology:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    # mkdtemp makes 0700 folders; the PostgreSQL user must be able to enter it.
    root.chmod(0o755)
    # SHARDSVC_TEST_BASE_PORT, when set, wins over a module's own start port: test runs that
    # share a machine each keep to their own block (free_base_port skips what is taken).
    chosen = os.environ.get("SHARDSVC_TEST_BASE_PORT")
    start = int(chosen) if chosen else (start_port or 25400)
    layout = LocalLayout(
        root=root,
        base_port=free_base_port(start, HA_SPAN if ha else PORTS_PER_TOPOLOGY),
        shards=shards,
        replicas=replicas,
        durable=False,  # throwaway data: skip fsync
        workers=2,
        pg_settings={"timezone": f"'{SERVER_TIME_ZONE}'"},
        ha=ha,
    )
    topology = LocalTopology(layout, echo=lambda message: print(f"[topology] {message}"))
    _made.append(topology)
    return topology


# Every topology this session made, so the session's end removes whatever a test left running
# (processes, app hosts' network namespaces and bridge) even when its own teardown did not run.
_made: list[LocalTopology] = []


_session_topology: LocalTopology | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Choose the session topology's folder and ports and write its topology file before
    collection, so Django (and test modules importing models) can be set up; the servers
    themselves start only when a test asks for the `topology` fixture."""
    global _session_topology
    import django

    _session_topology = make_topology("shardsvc-test-")
    _session_topology.layout.root.mkdir(parents=True, exist_ok=True)
    _session_topology.write_topology_file()
    # The topology's file, secret key and plain-HTTP profile, as its processes get them.
    os.environ.update(_session_topology.settings_env())
    django.setup()


def pytest_unconfigure(config: pytest.Config) -> None:
    if _session_topology is not None:
        _session_topology.destroy()  # also when no test started it: removes the folder
    for made in _made:
        if made.layout.root.exists() or made.network.namespaces():
            made.destroy()


@pytest.fixture(scope="session")
def topology() -> Iterator[LocalTopology]:
    assert _session_topology is not None
    try:
        _session_topology.up(service=False, migrate=True)
        yield _session_topology
    finally:
        _session_topology.destroy()


@pytest.fixture(scope="session")
def django_db(topology: LocalTopology) -> Iterator[None]:
    """Django in the test process, against the harness topology (through PgBouncer)."""
    yield
    from django.db import connections

    from project.pgpool import close_all_pools

    connections.close_all()
    close_all_pools()


@contextmanager
def running_service(topology: LocalTopology, *, name: str, port: int,
                    **env: str) -> Iterator[ServiceProcess]:
    """A service of the harness topology for the length of the block, stopped after it."""
    svc = topology.start_service(name=name, port=port, **env)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def throttled(topology: LocalTopology) -> Iterator[ServiceProcess]:
    """The service with the throttling tests' small limits (tests/throttle_client.py)."""
    from tests.throttle_client import throttled_service

    with throttled_service(topology) as svc:
        yield svc


@pytest.fixture(scope="session")
def service(topology: LocalTopology) -> Iterator[ServiceProcess]:
    """The service under Gunicorn with gevent workers, on the test URLconf (tests/urls.py: the
    diagnostics endpoints). Its throttles are on with limits no test session reaches (every test
    calls from 127.0.0.1, schema fuzzing writes as one user): tests/test_throttle.py checks the
    limits on a service of its own."""
    svc = topology.start_service(name="service", SHARDSVC_URLCONF="tests.urls",
                                 **UNREACHED_THROTTLES)
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture
def admin(topology: LocalTopology):
    """Open a direct admin connection to a server of the harness topology by alias."""
    opened = []

    def connect(alias: str):
        conn = topology.admin_connect(topology.node(alias))
        opened.append(conn)
        return conn

    yield connect
    for conn in opened:
        conn.close()


@pytest.fixture(scope="session")
def tenants(django_db) -> dict[str, object]:
    """Three tenants over two shards, two of them sharing shard_0: a, c on shard_0; b on
    shard_1. Slugs are unique per session."""
    import uuid

    from shards.directory import create_tenant

    suffix = uuid.uuid4().hex[:8]
    return {
        "a": create_tenant(f"alpha-{suffix}", shard="shard_0"),
        "b": create_tenant(f"bravo-{suffix}", shard="shard_1"),
        "c": create_tenant(f"charlie-{suffix}", shard="shard_0"),
    }


@pytest.fixture(autouse=True)
def _close_connections_after_test() -> Iterator[None]:
    """Give Django's connections back after each test, as the end of a request does, so a
    connection broken by one test's fault injection is not reused by the next."""
    yield
    if "django" in sys.modules:
        from django.db import connections

        connections.close_all()


def wait_until_serving(topology: LocalTopology, timeout: float = 30.0) -> None:
    """Every server answers through PgBouncer and every replica streams again."""
    from shards import pg

    deadline = time.monotonic() + timeout
    pending = {n.alias for n in topology.layout.nodes()}
    while pending and time.monotonic() < deadline:
        for alias in sorted(pending):
            dsn = f"postgresql://app@127.0.0.1:{topology.layout.pgbouncer_port}/{alias}"
            try:
                with pg.connect(dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                pending.discard(alias)
            except Exception:
                pass
        if pending:
            time.sleep(0.2)
    while time.monotonic() < deadline:
        if all_streaming(topology):
            return
        time.sleep(0.2)
    raise AssertionError(f"topology not serving after {timeout} s: {sorted(pending)}")


def all_streaming(topology: LocalTopology) -> bool:
    for node in topology.layout.nodes():
        if node.role != "primary":
            continue
        with topology.admin_connect(node) as conn:
            streaming = conn.execute(
                "SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming'"
            ).fetchone()[0]
        if streaming < topology.layout.replicas:
            return False
    return True


@pytest.fixture
def stopped(topology: LocalTopology) -> Iterator:
    """Stop servers by alias for one test; after it they are started again and the test waits
    until everything serves and streams, since later tests share the topology."""
    down: list[str] = []

    def stop(alias: str, mode: str = "immediate") -> None:
        topology.stop_node(alias, mode=mode)
        down.append(alias)

    yield stop
    for alias in down:
        if not topology.postgres_running(topology.node(alias)):
            topology.start_node(alias)
    wait_until_serving(topology)
