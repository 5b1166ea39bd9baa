"""The highly available topology with the service running on it, and a steady load through
the service's HTTP API, for failover tests and the failover benchmark.

`ha_service_topology()` starts control + shards under Patroni with a 3-member etcd, migrated,
and the service under Gunicorn. `ServiceLoad` runs, on threads, end users who post comments
and readers who list them, on sites of chosen shards, and keeps every call's outcome (status,
error code, Retry-After, when it was sent and answered, the comment's id) so a test can count
errors per shard and compare acknowledged comments with what the new leader holds.
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from deploy.topology import LocalTopology, ServiceProcess
from routers.write_hold import FAILOVER_WAITS
from shards import pg
from tests.api_client import UNREACHED_THROTTLES, SiteClient, create_site
from tests.client import Connection
from tests.conftest import make_topology

# The service's FAILOVER_HOLD_SECONDS (its default): how long a write is held before a 503.
HOLD_SECONDS = 6.0
# The hold gives up when its next wait (at most FAILOVER_WAITS' longest) would end past the
# bound, so its 503 comes at the earliest this long after the request started.
HELD_AT_LEAST = HOLD_SECONDS - FAILOVER_WAITS[1]
# Client-side timeout: above the service's request deadline (10 s), so every answer is the
# service's own, never this client giving up.
CLIENT_TIMEOUT = 20.0
# Threads that send offered writes (ServiceLoad's open_writes): enough for a failing shard's
# share of 200 writes/s held for the whole hold (6 s), so offered writes wait for a free thread
# only past that.
OPEN_WRITE_THREADS = 640


@contextmanager
def ha_service_topology(prefix: str, *, shards: int = 2, start_port: int | None = None,
                        durable: bool = False) -> Iterator[tuple[LocalTopology, ServiceProcess]]:
    """An HA topology (1 replica per primary), migrated, with the service running; destroyed
    on exit, also when the body fails."""
    topo = make_topology(prefix, shards=shards, replicas=1, ha=True, start_port=start_port)
    if durable:
        topo = LocalTopology(dataclasses.replace(topo.layout, durable=True), echo=topo.echo)
    try:
        topo.up(service=False, migrate=True)
        service = topo.start_service(name="service", **UNREACHED_THROTTLES)
        yield topo, service
    finally:
        topo.destroy()


@dataclasses.dataclass(frozen=True)
class Call:
    kind: str  # "write" or "read"
    shard: str
    sent: float
    answered: float
    status: int  # 0: no HTTP answer (connection refused or reset, client timeout)
    code: str = ""  # the error body's "error"
    retry_after: str | None = None
    comment_id: str = ""  # of an acknowledged write
    due: float | None = None  # when an offered write was due (ServiceLoad's open_writes)

    @property
    def seconds(self) -> float:
        """From sending to the answer: the service's own time."""
        return self.answered - self.sent

    @property
    def offered(self) -> float:
        """When the client wanted it sent: when it was due, or sent."""
        return self.sent if self.due is None else self.due

    @property
    def waited(self) -> float:
        """From when the call was due to the answer: what the client saw, a wait for a free
        load thread included."""
        return self.answered - self.offered

    @property
    def ok(self) -> bool:
        return self.status in (200, 201)


class SiteUser:
    """One site on a shard, with a thread its users comment on."""

    def __init__(self, service: ServiceProcess, topo: LocalTopology, shard: str) -> None:
        owner = create_site(service, topo, prefix="ha", shard=shard)
        assert owner.shard == shard, (owner.shard, shard)
        self.shard = shard
        self.writer: SiteClient = owner.as_user("writer")
        self.thread = self.writer.thread()
        # Readers send no causal token: a reader that has not written reads from a replica,
        # which a failover of the primary must not interrupt.
        self.reader = SiteClient(owner.base, owner.slug, owner.key, owner.shard)

    def write(self, via: Connection | None = None, *, due: float | None = None) -> Call:
        sent = time.monotonic()
        answer = _call(self.writer, via, "POST", f"/threads/{self.thread}/comments",
                       {"body": f"ha {uuid.uuid4().hex[:8]}"}, user=True)
        return dataclasses.replace(_record("write", self.shard, sent, answer), due=due)

    def read(self, via: Connection | None = None) -> Call:
        sent = time.monotonic()
        answer = _call(self.reader, via, "GET", f"/threads/{self.thread}/comments?limit=5")
        return _record("read", self.shard, sent, answer)


def _call(client: SiteClient, via: Connection | None, method: str, path: str,
          body: object = None, *, user: bool = False):
    try:
        return client.call(method, path, body, user=user, via=via)
    except (OSError, http.client.HTTPException) as exc:
        return exc  # refused, reset, closed, timed out: the service gave no answer


def _record(kind: str, shard: str, sent: float, answer: object) -> Call:
    answered = time.monotonic()
    if isinstance(answer, BaseException):
        return Call(kind, shard, sent, answered, 0, code=type(answer).__name__)
    body = answer.body if isinstance(answer.body, dict) else {}
    return Call(kind, shard, sent, answered, answer.status,
                code=str(body.get("error", "")),
                retry_after=answer.headers.get("Retry-After"),
                comment_id=str(body.get("id", "")) if answer.status == 201 else "")


@dataclasses.dataclass
class ServiceLoad:
    """Writers and readers on threads, each paced to its share of the rates and calling the
    sites of one shard (threads are dealt to the shards in turn). Used as a context manager:
    the load runs inside the block.

    With `open_writes`, writes are offered on a fixed schedule instead, each on a thread of a
    pool, whatever is still in flight: a write held through a failover does not put off the
    next one, so a failing shard gets its whole share of writes, all held at once (at 100/s and
    a 2.5 s promotion, about 250), as real clients would send them."""

    users: list[SiteUser]
    writes_per_second: float
    reads_per_second: float
    write_threads: int = 4
    read_threads: int = 4
    open_writes: bool = False
    calls: list[Call] = dataclasses.field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []
        self._pool: ThreadPoolExecutor | None = None
        self._local = threading.local()
        self.started = 0.0
        self.stopped = 0.0

    def __enter__(self) -> ServiceLoad:
        self.started = time.monotonic()
        for kind, rate, threads in (("write", self.writes_per_second, self.write_threads),
                                    ("read", self.reads_per_second, self.read_threads)):
            if rate <= 0:
                continue
            if kind == "write" and self.open_writes:
                self._pool = ThreadPoolExecutor(max_workers=OPEN_WRITE_THREADS,
                                                thread_name_prefix="offered-write")
                self._start(self._offer_writes, rate)
                continue
            for n in range(threads):
                self._start(self._run, kind, rate / threads, n)
        return self

    def _start(self, target: Callable[..., None], *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        thread.start()
        self._threads.append(thread)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=CLIENT_TIMEOUT + 5)
        if self._pool is not None:  # writes not sent yet are dropped; sent ones are answered
            self._pool.shutdown(wait=True, cancel_futures=True)
        self.stopped = time.monotonic()

    def _run(self, kind: str, rate: float, offset: int) -> None:
        interval = 1 / rate
        # Each thread calls the sites of one shard, so that writes held on a failing shard hold
        # up only that shard's threads: the other shard's tenants keep their full rate.
        shards = sorted({user.shard for user in self.users})
        mine = [user for user in self.users if user.shard == shards[offset % len(shards)]]
        turn = offset // len(shards)
        next_at = time.monotonic()
        # One keep-alive connection per thread, as a browser keeps one: a new connection per
        # call cost the clients and the service more than the call itself.
        via = Connection(self.users[0].reader.base, timeout=CLIENT_TIMEOUT)
        while not self._stop.is_set():
            user = mine[turn % len(mine)]
            turn += 1
            call = user.write(via) if kind == "write" else user.read(via)
            with self._lock:
                self.calls.append(call)
            # Paced by schedule, not by answers: a held write does not slow the others down
            # beyond this thread's own wait.
            next_at = max(next_at + interval, time.monotonic() - 1.0)
            self._stop.wait(max(0.0, next_at - time.monotonic()))
        via.close()

    def _offer_writes(self, rate: float) -> None:
        assert self._pool is not None
        # Each shard its share, whatever the other's writes are doing.
        by_shard: dict[str, list[SiteUser]] = {}
        for user in self.users:
            by_shard.setdefault(user.shard, []).append(user)
        order = [user for turn in itertools.zip_longest(*by_shard.values()) for user in turn
                 if user is not None]
        interval, n = 1 / rate, 0
        while not self._stop.is_set():
            due = self.started + n * interval
            self._pool.submit(self._offered_write, order[n % len(order)], due)
            n += 1
            self._stop.wait(max(0.0, self.started + n * interval - time.monotonic()))

    def _offered_write(self, user: SiteUser, due: float) -> None:
        via = getattr(self._local, "via", None)
        if via is None:
            via = self._local.via = Connection(user.reader.base, timeout=CLIENT_TIMEOUT)
        call = user.write(via, due=due)
        with self._lock:
            self.calls.append(call)

    def snapshot(self) -> list[Call]:
        with self._lock:
            return list(self.calls)

    def succeeded_after(self, kind: str, shard: str, moment: float) -> list[Call]:
        return [c for c in self.snapshot()
                if c.kind == kind and c.shard == shard and c.ok and c.sent > moment]

    def rate(self, kind: str) -> float:
        """Answered calls of this kind per second over the load's run."""
        seconds = (self.stopped or time.monotonic()) - self.started
        return sum(1 for c in self.calls if c.kind == kind) / seconds if seconds else 0.0


def acked_ids(calls: list[Call], shard: str) -> set[int]:
    return {int(c.comment_id) for c in calls
            if c.kind == "write" and c.shard == shard and c.status == 201}


def present_ids(topo: LocalTopology, shard: str, ids: set[int]) -> set[int]:
    """Which of these comment ids the shard's current leader holds."""
    with pg.connect(topo.leader(shard).direct_dsn) as conn:
        rows = conn.execute("SELECT id FROM comments_comment WHERE id = ANY(%s)", [sorted(ids)])
        return {row[0] for row in rows}


def write_pause(calls: list[Call], shard: str, since: float) -> float:
    """The longest wait a client saw between two acknowledged writes of the shard ending
    after `since` (what a user sees as the pause: held writes included)."""
    acks = sorted(c.answered for c in calls if c.kind == "write" and c.shard == shard and c.ok)
    gaps = [b - a for a, b in itertools.pairwise(acks) if b > since]
    return max(gaps, default=0.0)


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")
