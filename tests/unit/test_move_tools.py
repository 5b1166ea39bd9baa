"""Pure parts of the operations kit: natural order of names, move progress as shown, the
id ranges of continuous verification, the name a process gives its connections, and how a
blocked migration names its blockers."""

from __future__ import annotations

import itertools

import pytest

from migrations_tools.blockers import Blocker, describe_blockers
from migrations_tools.move_progress import CutoverSteps, clamp_progress, progress_text, shown_lag
from migrations_tools.natural_sort import natural_key
from migrations_tools.verify_ranges import merge_ranges, outside, plan_ranges, settled_below
from project.pgpool.session import application_name_for
from shards.global_ids import EPOCH_MS, id_millis

pytestmark = pytest.mark.unit


def test_natural_order_reads_numbers_as_numbers() -> None:
    slugs = ["demo-10", "demo-3", "Demo-2", "demo", "demo-3a", "alpha-1", "shard_10", "shard_2"]
    assert sorted(slugs, key=natural_key) == [
        "alpha-1", "demo", "Demo-2", "demo-3", "demo-3a", "demo-10", "shard_2", "shard_10"]
    # A number and a word at the same place never compare directly (no TypeError).
    assert sorted(["a-b", "a-1"], key=natural_key) == ["a-1", "a-b"]
    assert natural_key("") == ()


@pytest.mark.parametrize(("copied", "total", "shown"), [
    (5624, 5613, (5624, 5624)),  # the tenant wrote during the copy: the total grows
    (10, 100, (10, 100)),
    (0, 0, (0, 0)),
    (-1, 5, (0, 5)),
])
def test_progress_never_exceeds_its_total(copied: int, total: int,
                                          shown: tuple[int, int]) -> None:
    assert clamp_progress(copied, total) == shown
    done, of = shown
    assert done <= of


def test_progress_text_and_lag_of_finished_moves() -> None:
    assert progress_text(5624, 5613) == "5624/5624 rows (100%)"
    assert progress_text(1, 4) == "1/4 rows (25%)"
    assert progress_text(7, 0) == "7/7 rows (100%)"
    assert progress_text(0, 0) == "0 rows"
    assert shown_lag("catching_up", 4096) == 4096
    for finished in ("done", "aborted", "failed"):
        assert shown_lag(finished, 4096) is None


def test_plan_ranges_cover_exactly_in_order() -> None:
    ranges = plan_ranges(100, 1000, 16)
    assert len(ranges) == 16
    assert ranges[0][0] == 100 and ranges[-1][1] == 1000
    assert all(a[1] == b[0] for a, b in itertools.pairwise(ranges))
    widths = {hi - lo for lo, hi in ranges}
    assert max(widths) - min(widths) <= 1
    assert plan_ranges(0, 3, 16) == [(0, 1), (1, 2), (2, 3)]  # never an empty range
    assert plan_ranges(5, 5, 4) == [] and plan_ranges(9, 5, 4) == [] and plan_ranges(0, 9, 0) == []


def test_settled_ids_are_those_made_before_the_settling_time() -> None:
    now = EPOCH_MS + 3_600_000
    below = settled_below(now, 5.0)
    assert id_millis(below) == now - 5000
    assert id_millis(below - 1) < now - 5000  # the id just below was made earlier


def test_verified_ranges_are_merged_before_they_are_left_out() -> None:
    assert merge_ranges([(20, 30), (0, 10), (10, 20), (40, 50), (45, 60)]) == [
        (0, 30), (40, 60)]
    condition, params = outside([(10, 20), (0, 10), (40, 50)])
    assert params == [0, 20, 40, 50]
    assert condition.as_string(None).count("t.id >= %s") == 2
    condition, params = outside([])
    assert condition.as_string(None) == "true" and params == []


@pytest.mark.parametrize(("argv", "name"), [
    (["manage.py", "move_tenant", "acme", "shard_1"], "shardsvc-move_tenant"),
    (["/srv/app/manage.py", "migrate_shards"], "shardsvc-migrate_shards"),
    (["/usr/bin/gunicorn", "-c", "deploy/gunicorn.conf.py"], "shardsvc-web-4242"),
    (["manage.py"], "shardsvc-web-4242"),
])
def test_each_process_names_its_connections(argv: list[str], name: str) -> None:
    assert application_name_for(argv, 4242) == name


def test_a_blocked_migration_names_its_blockers() -> None:
    blockers = [Blocker(77, "shardsvc-web-9", "app", "idle in transaction", 12.4, "SELECT 1"),
                Blocker(78, "", "postgres", "active", None, "")]
    assert describe_blockers(blockers) == (
        "blocked by pid 77 (application_name 'shardsvc-web-9', user app, idle in transaction, "
        "open 12s: SELECT 1); pid 78 (application_name '(none set)', user postgres, active: ?)")
    assert describe_blockers([]) == ""


def test_cutover_steps_time_each_step_from_the_previous_one() -> None:
    steps = CutoverSteps(fenced=10.0)
    steps.done("older_transactions", now=10.0125)
    steps.done("flush", now=10.0135)
    steps.done("flip", now=10.2)
    assert steps.ms == {"older_transactions": 12.5, "flush": 1.0, "flip": 186.5}
    assert steps.text() == "older_transactions 12.5, flush 1.0, flip 186.5"
