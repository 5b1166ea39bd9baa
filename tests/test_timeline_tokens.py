"""Causal tokens across a timeline change: a real promotion on a throwaway topology (one shard,
one replica). A client writes and keeps its token; the primary stops, the replica is promoted
(`pg_ctl promote`: a new timeline) and PgBouncer's primary entry is re-pointed at it (what the
deploy side does in production); then reads carrying the old token succeed and see the write,
and the client writes and reads on.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess

import pytest

from deploy import processes as proc
from deploy.layout import pg_bin
from deploy.topology import LocalTopology
from routers import causal
from tests.api_client import UNREACHED_THROTTLES, create_site
from tests.client import get, wait_until
from tests.conftest import make_topology

pytestmark = pytest.mark.slow

SHARD = "shard_0"
REPLICA = "shard_0_replica_1"


def timeline(topo: LocalTopology, alias: str) -> int:
    """A primary's timeline: the first 8 hex digits of its current WAL file's name."""
    with topo.admin_connect(topo.node(alias)) as conn:
        (name,) = conn.execute("SELECT pg_walfile_name(pg_current_wal_lsn())").fetchone()
    return int(name[:8], 16)


def repoint_pgbouncer(topo: LocalTopology, alias: str, port: int) -> None:
    """PgBouncer's entry for `alias` now leads to the server on `port`, reloaded in place."""
    ini = topo.pgbouncer_dir / "pgbouncer.ini"
    text, count = re.subn(rf"^{alias} = host=(\S+) port=\d+ ",
                          rf"{alias} = host=\1 port={port} ", ini.read_text(), flags=re.M)
    assert count == 1, f"no entry for {alias} in {ini}"
    ini.write_text(text)
    pid = proc.read_pid(topo.pgbouncer_dir / "pgbouncer.pid")
    assert pid is not None
    os.kill(pid, signal.SIGHUP)


def test_a_token_from_the_old_timeline_reads_the_write_after_a_promotion() -> None:
    topo = make_topology("shardsvc-tli-", shards=1, replicas=1, start_port=27200)
    try:
        topo.up(service=False, migrate=True)
        service = topo.start_service(name="service", SHARDSVC_URLCONF="tests.urls",
                                     **UNREACHED_THROTTLES)
        site = create_site(service, topo, prefix="tli", shard=SHARD).as_user("writer")
        thread = site.thread()
        written = site.call("POST", f"/threads/{thread}/comments", {"body": "before"},
                            user=True)
        assert written.status == 201, written.body
        old_token = site.causal_token
        before = timeline(topo, SHARD)

        def replica_has_it() -> bool:
            answer = get(f"{site.root}/_diag/threads/{thread}",
                         headers={causal.HEADER: old_token})
            return answer.body.get("served_by") == REPLICA

        # The promotion keeps the write only if the replica received it (asynchronous
        # replication): wait for that, as a synchronous standby would.
        wait_until(replica_has_it, timeout=15, what="the replica replayed the write")

        topo.stop_node(SHARD, "fast")
        subprocess.run(proc.as_service_user(
            [pg_bin("pg_ctl"), "promote", "-D", str(topo.node(REPLICA).datadir), "-w"]),
            check=True, capture_output=True)
        repoint_pgbouncer(topo, SHARD, topo.node(REPLICA).port)
        assert timeline(topo, REPLICA) > before

        # Reads with the old token: never an error, never without the write (both workers,
        # likely, over a dozen requests).
        for _ in range(12):
            answer = site.call("GET", f"/threads/{thread}/comments",
                               headers={causal.HEADER: old_token})
            assert answer.status == 200, answer.body
            assert "before" in {item["body"] for item in answer.body["items"]}
        # Writes go on, on the new primary (held while PgBouncer reconnects), and the new
        # token reads them.
        site.causal_token = old_token
        after = site.call("POST", f"/threads/{thread}/comments", {"body": "after"}, user=True)
        assert after.status == 201, after.body
        answer = site.call("GET", f"/threads/{thread}/comments")
        assert answer.status == 200, answer.body
        assert {"before", "after"} <= {item["body"] for item in answer.body["items"]}
    finally:
        topo.destroy()
