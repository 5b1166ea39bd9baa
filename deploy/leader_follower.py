"""The leader follower: keeps PgBouncer's cluster entries on the member Patroni elected.

    python -m deploy.leader_follower <topology folder>     # started and stopped by `up`/`down`

Every POLL_INTERVAL it asks each member's REST API `/primary` (shards.patroni.find_leader); when
a cluster's leader is another member than PgBouncer's entry names, and that member accepts
writes, it rewrites pgbouncer.ini and reloads PgBouncer (deploy/pooler.py).

Why a follower process and not Patroni's `on_role_change` callback:
- the callback runs on the database host, inside the member that changed role; PgBouncer runs
  beside the app. A callback would have to reach every PgBouncer host, and with several members
  changing role at once (the old leader demoted, the new one promoted) two callbacks would race
  to write one file;
- a callback is an edge: one lost (PgBouncer down, the member killed right after promoting)
  leaves PgBouncer pointing at the old leader for good. The follower compares the state it sees
  with the state it wants on every poll, so it also repairs an entry after its own restart;
- `/primary` on the new leader answers 200 about 0.2 s before it accepts writes: the follower
  checks `pg_is_in_recovery()` on it before pointing PgBouncer there, so clients are never sent
  to a server still finishing its promotion.
One poll costs a REST call per member; at 0.2 s the entry follows within ~0.2 s of Patroni,
and while a leader is in doubt it polls every DOUBT_INTERVAL instead.

Beside it, a thread lifts a switchover's write fence whose command died before lifting it
(migrations_tools/switchover_fence.py: `lift_if_stale`), on every member every
FENCE_CHECK_SECONDS: without it the leader would refuse writes until someone noticed.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType

import psycopg

from deploy.layout import ADMIN_USER, APP_DB, LocalLayout, Node
from deploy.topology import LocalTopology
from migrations_tools.switchover_fence import lift_if_stale
from shards import patroni, pg

POLL_INTERVAL = 0.2
# While a cluster's leader is in doubt (between the old leader releasing its key and the new
# one taking writes), poll this often: the entry then follows within ~0.05 s of the promotion.
DOUBT_INTERVAL = 0.05
# A dead command's fence is lifted within this long (a live one is never touched). Checked on
# a thread of its own: a member that hangs on connect must not delay the leader polls.
FENCE_CHECK_SECONDS = 2.0
log = logging.getLogger("shardsvc.leader_follower")


def admin_dsn(node: Node) -> str:
    return f"host=127.0.0.1 port={node.port} user={ADMIN_USER} dbname={APP_DB}"


def accepts_writes(node: Node) -> bool:
    try:
        with pg.connect(admin_dsn(node), connect_timeout=1) as conn:
            return pg.fetch_value(conn, "SELECT pg_is_in_recovery()") is False
    except psycopg.Error:
        return False


def lift_stale_fences(topology: LocalTopology) -> None:
    for node in topology.layout.nodes():
        try:
            if lift_if_stale(admin_dsn(node)):
                log.warning("%s: lifted a switchover's write fence whose command died before "
                            "lifting it", node.alias)
        except psycopg.Error:
            continue  # down or restarting: checked again next time


def watch_fences(root: Path, stop: threading.Event) -> None:
    while not stop.wait(FENCE_CHECK_SECONDS):
        try:
            lift_stale_fences(load(root))  # loaded each time: `up --shards N` adds members
        except Exception:
            log.exception("fence check failed")


def follow_once(topology: LocalTopology,
                leaders: dict[str, str]) -> tuple[dict[str, str], bool]:
    """One poll: the leaders PgBouncer should point at now (unchanged where unsure), and
    whether any cluster's leader is in doubt (none leads, or a new one does not take writes
    yet)."""
    wanted = dict(leaders)
    doubt = False
    for cluster in topology.layout.cluster_names:
        url = patroni.find_leader(topology.member_urls(cluster))
        if url is None:
            # No leader yet: keep the entry, writes fail there as they would anyway.
            doubt = True
            continue
        node = next(n for n in topology.layout.members(cluster)
                    if topology.rest_url(n) == url)
        if node.alias != leaders.get(cluster):
            if accepts_writes(node):
                wanted[cluster] = node.alias
            else:
                doubt = True
    return wanted, doubt


def load(root: Path) -> LocalTopology:
    layout = LocalLayout.load(root)
    if layout is None or not layout.ha:
        raise SystemExit(f"{root} holds no highly available topology")
    return LocalTopology(layout, echo=log.info)


def run(root: Path) -> None:
    topology = load(root)
    layout_file = root / "layout.json"
    seen = layout_file.stat().st_mtime_ns
    leaders = topology.pgbouncer_leaders()
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    fences_stop = threading.Event()
    fences = threading.Thread(target=watch_fences, args=(root, fences_stop), daemon=True,
                              name="fence-check")
    fences.start()
    log.info("following %s", ", ".join(f"{c} -> {a}" for c, a in sorted(leaders.items())))
    while not stopping:
        started = time.monotonic()
        doubt = False
        try:
            if layout_file.stat().st_mtime_ns != seen:
                # `up --shards N` added a cluster: follow it too (PgBouncer already has its
                # entry, written by `up` for its first member).
                seen = layout_file.stat().st_mtime_ns
                topology = load(root)
                leaders = {**topology.pgbouncer_leaders(), **leaders}
                log.info("topology changed: following %s", ", ".join(sorted(leaders)))
            wanted, doubt = follow_once(topology, leaders)
            if wanted != leaders:
                topology.repoint_pgbouncer(wanted)
                for cluster, alias in sorted(wanted.items()):
                    if leaders.get(cluster) != alias:
                        log.warning("%s: PgBouncer now points at %s (was %s)", cluster, alias,
                                    leaders.get(cluster))
                leaders = wanted
        except Exception:
            # Never die: a follower that stops leaves PgBouncer on a dead leader after the next
            # failover. Log and poll again.
            log.exception("poll failed")
        interval = DOUBT_INTERVAL if doubt else POLL_INTERVAL
        time.sleep(max(0.0, interval - (time.monotonic() - started)))
    fences_stop.set()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run(Path(args[0]).resolve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
