"""How a benchmark splits the box's CPU by kind of process (tests/benchmarks/cpu_split.py)."""

from __future__ import annotations

import os

from tests.benchmarks.cpu_split import ME, CpuSplit, Snapshot, group_of


def test_processes_are_grouped_by_what_they_run() -> None:
    assert group_of(7, "gunicorn", "gunicorn: worker [project.wsgi]", me=1) == "service (Gunicorn)"
    assert group_of(7, "postgres", "postgres: app app 127.0.0.1(5) idle", me=1) == "PostgreSQL"
    assert group_of(7, "python3", "/usr/bin/python3 /usr/bin/patroni /x/patroni.yml",
                    me=1) == "Patroni"
    assert group_of(7, "etcd", "etcd --name e1", me=1) == "etcd"
    assert group_of(7, "pgbouncer", "pgbouncer /x/pgbouncer.ini", me=1) == "PgBouncer"
    assert group_of(7, "redis-server", "redis-server 127.0.0.1:1", me=1) == "Redis"
    assert group_of(1, "python", "python -m tests.benchmarks.bench_failover", me=1) == ME
    assert group_of(7, "sshd", "sshd: root", me=1) == "other"
    # The executable's name first: a path in the command line does not make a server Patroni.
    assert group_of(7, "postgres", "/usr/lib/postgresql/15/bin/postgres -D /x/patroni/data",
                    me=1) == "PostgreSQL"
    assert group_of(7, "gunicorn: maste", "gunicorn: master [shardsvc]", me=1) == (
        "service (Gunicorn)")


def test_the_split_counts_live_processes_and_leaves_the_rest_to_exited_ones() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    before = Snapshot(busy=1000, total=4000, own={
        10: ("service (Gunicorn)", 100), 11: ("PostgreSQL", 50), 12: ("Redis", 5)})
    after = Snapshot(busy=1000 + 3 * tick, total=4000 + 4 * tick, own={
        10: ("service (Gunicorn)", 100 + 2 * tick),  # 2 s of its own
        11: ("PostgreSQL", 50 + tick // 2),  # 0.5 s
        13: ("PostgreSQL", tick // 4),  # started in the window: all of it counts
    })  # 12 exited: its share is in what is left
    split = CpuSplit()
    split.add(before, after, wall=2.0)
    assert split.seconds["service (Gunicorn)"] == 2.0
    assert split.seconds["PostgreSQL"] == (tick // 2 + tick // 4) / tick
    assert split.seconds["exited or unlisted"] == (3 * tick - 2 * tick - tick // 2
                                                   - tick // 4) / tick
    assert split.line() == (
        "CPU over the runs, in cores of 2: service (Gunicorn) 1.00, PostgreSQL 0.38, "
        "exited or unlisted 0.12; the box 75% busy")


def test_a_recycled_pid_counts_as_a_new_process() -> None:
    tick = os.sysconf("SC_CLK_TCK")
    before = Snapshot(busy=0, total=0, own={10: ("PostgreSQL", 5 * tick)})
    after = Snapshot(busy=tick, total=2 * tick, own={10: ("Redis", tick)})
    split = CpuSplit()
    split.add(before, after, wall=1.0)
    assert split.seconds["Redis"] == 1.0 and split.seconds["PostgreSQL"] == 0
