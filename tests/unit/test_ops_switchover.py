"""The ops dashboard's switchover, its pure parts: the request checked (each refusal a 4xx or
503 with its reason, before any command starts), a running switchover found in a command line,
the outcome read from the command's log, and Patroni's history with the old leader and reason."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import RequestFactory

from migrations_tools import switchover_runs
from migrations_tools.ops_dashboard import start_switchover
from migrations_tools.ops_switchover import RefusedRequest, check_request, history_rows
from migrations_tools.switchover_runs import SwitchoverRun, read_run, switchover_cluster
from shards import patroni
from shards.shardmap import Cluster, Server, ShardMap
from tests.client import wait_until

MEMBERS = [{"name": "shard_0", "role": "leader", "state": "running", "timeline": 3},
           {"name": "shard_0_replica_1", "role": "sync_standby", "state": "streaming",
            "timeline": 3, "lag": 0}]


def cluster(name: str, *, ha: bool) -> Cluster:
    dsn = f"postgresql://app@127.0.0.1:1/{name}"
    return Cluster(name, Server(name, dsn, dsn, "primary"),
                   patroni=("http://127.0.0.1:2",) if ha else ())


SHARD_MAP = ShardMap(control=cluster("default", ha=False),
                     shards=(cluster("shard_0", ha=True),), redis_url="redis://127.0.0.1:3/0",
                     source=Path("/nonexistent/topology.toml"))


def check(name: str, target: str = "", *, members: Any = MEMBERS,
          running: dict[str, int] | None = None) -> Any:
    def read(_: Cluster) -> list[dict[str, Any]]:
        if isinstance(members, Exception):
            raise members
        return members
    return check_request(SHARD_MAP, name, target, members=read, running=running or {})


def test_a_good_request_is_the_cli_command() -> None:
    assert check("shard_0").command == ["switchover", "shard_0"]
    chosen = check("shard_0", "shard_0_replica_1")
    assert chosen.command == ["switchover", "shard_0", "--to", "shard_0_replica_1"]
    assert chosen.leader == "shard_0"
    assert chosen.describe() == \
        "the switchover of shard_0 from shard_0 to shard_0_replica_1"


@pytest.mark.parametrize(("name", "target", "extra", "status", "code", "says"), [
    ("shard_9", "", {}, 400, "unknown_cluster", "choose one of default, shard_0"),
    ("", "", {}, 400, "unknown_cluster", "no cluster ''"),
    ("default", "", {}, 409, "not_patroni", "default is not managed by Patroni"),
    ("shard_0", "x; rm -rf /", {}, 400, "bad_member", "is not a member name"),
    ("shard_0", "--timeout", {}, 400, "bad_member", "is not a member name"),
    ("shard_0", "nobody", {}, 400, "unknown_member",
     "'nobody' is no member of shard_0; choose among: shard_0_replica_1"),
    ("shard_0", "shard_0", {}, 409, "already_leader", "shard_0 already leads shard_0"),
    ("shard_0", "", {"running": {"shard_0": 4242}}, 409, "switchover_running", "pid 4242"),
    ("shard_0", "", {"members": patroni.PatroniError("no Patroni member answered")}, 503,
     "patroni_unreachable", "no Patroni member answered"),
    ("shard_0", "", {"members": [{**MEMBERS[0], "role": "replica"}, MEMBERS[1]]}, 409,
     "no_leader", "has no leader now"),
    ("shard_0", "", {"members": MEMBERS[:1]}, 409, "no_candidate", "add a replica"),
])
def test_a_refused_request_says_why(name: str, target: str, extra: dict[str, Any], status: int,
                                    code: str, says: str) -> None:
    with pytest.raises(RefusedRequest) as refused:
        check(name, target, **extra)
    assert (refused.value.status, refused.value.code) == (status, code)
    assert says in refused.value.message


def test_the_view_refuses_get_users_without_the_permission_and_unknown_clusters() -> None:
    factory = RequestFactory()
    assert start_switchover(factory.get("/admin/ops/switchover/")).status_code == 405

    anonymous = factory.post("/admin/ops/switchover/", {"cluster": "shard_0"})
    anonymous.user = AnonymousUser()
    answer = start_switchover(anonymous)
    assert answer.status_code == 403
    assert "shards.change_tenant" in json.loads(answer.content)["message"]

    unknown = factory.post("/admin/ops/switchover/", {"cluster": "shard_99"})
    unknown.user = User(username="root", is_active=True, is_staff=True, is_superuser=True)
    answer = start_switchover(unknown)
    assert answer.status_code == 400
    assert json.loads(answer.content)["error"] == "unknown_cluster"


@pytest.mark.parametrize(("argv", "cluster"), [
    (["/usr/bin/python3", "/srv/app/manage.py", "switchover", "shard_0"], "shard_0"),
    (["python", "manage.py", "switchover", "--to", "shard_1_replica_1", "shard_1"], "shard_1"),
    (["python", "manage.py", "switchover", "--timeout=30", "default", "--no-fence"], "default"),
    (["python", "-m", "django", "switchover", "-v", "2", "shard_2"], "shard_2"),
    (["python", "manage.py", "move_tenant", "acme", "shard_0"], None),
    (["python", "manage.py", "switchover"], None),
    (["vim", "switchover.py"], None),
    ([], None),
])
def test_a_running_switchover_is_told_by_its_command_line(argv: list[str],
                                                          cluster: str | None) -> None:
    assert switchover_cluster(argv) == cluster


def test_a_switchover_process_of_this_topology_is_found_until_it_ends(tmp_path: Path) -> None:
    # A process whose command line reads as `manage.py switchover unit-cluster` (a sleeper),
    # for the topology file in tmp_path.
    mine = tmp_path / "topology.toml"
    sleeper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()",
                                "manage.py", "switchover", "--to", "m1", "unit-cluster"],
                               stdin=subprocess.PIPE, cwd=tmp_path,
                               env={**os.environ, "SHARDSVC_TOPOLOGY": "topology.toml"})
    try:
        # Until the child has exec'd, /proc shows the test's own command line: poll for it.
        wait_until(lambda: switchover_runs.running(mine).get("unit-cluster") == sleeper.pid,
                   timeout=10, what="the sleeper read as a switchover of this topology")
        # Another topology on the same host has its own switchovers.
        assert "unit-cluster" not in switchover_runs.running(tmp_path / "other.toml")
    finally:
        sleeper.communicate(b"")
    assert "unit-cluster" not in switchover_runs.running(mine)


def test_a_second_start_waits_for_the_first(tmp_path: Path,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(switchover_runs, "move_log_dir", lambda: tmp_path)
    with (switchover_runs.launching(), pytest.raises(OSError, match="try again"),
          switchover_runs.launching(timeout=0.2)):
        pass
    with switchover_runs.launching():  # released
        pass


HEADER = "# 20261130-091500 ops dashboard: alice: /usr/bin/python3 /srv/manage.py switchover " \
         "shard_0\n"


def test_the_outcome_comes_from_the_commands_log(tmp_path: Path) -> None:
    done = HEADER + ("shard_0: shard_0 -> shard_0_replica_1; writes through PgBouncer paused "
                     "2.91 s (3 probe write(s) failed, done in 3.40 s)\n")
    assert read_run("shard_0", done, alive=False)[0::2] == ("done", "shard_0")
    assert read_run("shard_0", done, alive=False)[3] == "shard_0_replica_1"
    assert read_run("shard_0", HEADER, alive=True) == ("running", "", None, None)
    failed = HEADER + "CommandError: Patroni refused the switchover of shard_0 (412: x)\n"
    assert read_run("shard_0", failed, alive=False) == (
        "failed", "Patroni refused the switchover of shard_0 (412: x)", None, None)
    assert read_run("shard_0", HEADER, alive=False)[:2] == (
        "failed", "the command ended without output")

    older = tmp_path / "switchover-shard_0-20261130-090000-11.log"
    older.write_text(HEADER + "CommandError: no\n")
    newer = tmp_path / "switchover-shard_0-20261130-091500-12.log"
    newer.write_text(done)
    (tmp_path / "switchover-shard_01-20261130-092000-13.log").write_text(HEADER)
    runs = switchover_runs.recent_runs("shard_0", alive=False, folder=tmp_path)
    assert [(r.log, r.state) for r in runs] == [(str(newer), "done"), (str(older), "failed")]
    assert runs[0].by == "ops dashboard: alice"
    assert runs[0].started == dt.datetime(2026, 11, 30, 9, 15, tzinfo=dt.UTC)


def test_the_history_names_the_old_leader_and_a_dashboard_switchover() -> None:
    history: list[list[Any]] = [
        [1, 50331808, "no recovery target specified", "2026-11-30T09:00:01+00:00", "b"],
        [2, 67109024, "no recovery target specified", "2026-11-30T09:15:02+00:00", "a"],
        [3, 83886240, "no recovery target specified"],  # an entry Patroni did not enrich
    ]
    run = SwitchoverRun("shard_0", "/x.log", dt.datetime(2026, 11, 30, 9, 15, tzinfo=dt.UTC),
                        dt.datetime(2026, 11, 30, 9, 15, 4, tzinfo=dt.UTC), "done", "...",
                        "ops dashboard: alice", old_leader="b", new_leader="a")
    rows = history_rows("shard_0", history, [run])
    assert [r["timeline"] for r in rows] == ["3 → 4", "2 → 3", "1 → 2"]
    assert [(r["old_leader"], r["new_leader"]) for r in rows] == [
        ("a", None), ("b", "a"), (None, "b")]
    assert rows[1]["reason"] == "switchover from the ops dashboard: alice"
    assert rows[2]["reason"] == "PostgreSQL: no recovery target specified"
    assert rows[2]["lsn"] == "0/30000A0"
