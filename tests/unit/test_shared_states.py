"""Model states shared by the shards of one migrate_shards run (migrations_tools.shared_states):
built once per starting point, never changed by what is built after them."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import pytest
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.migration import Migration
from django.db.migrations.state import ProjectState

from migrations_tools.plans import runs_here
from migrations_tools.shared_states import SharedStates, Steps, build_steps


def shard_plan() -> tuple[list[Migration], list[bool]]:
    """Every migration of the project in order, from nothing applied, as a new shard runs it."""
    loader = MigrationLoader(None, ignore_no_migrations=True)
    plan = [loader.graph.nodes[key] for key in loader.graph.leaf_nodes()
            for key in loader.graph.forwards_plan(key)]
    seen: set[tuple[str, str]] = set()
    ordered = []
    for migration in plan:
        key = (migration.app_label, migration.name)
        if key not in seen:
            seen.add(key)
            ordered.append(migration)
    return ordered, [runs_here("shard_0", m) for m in ordered]


def test_each_operation_gets_its_own_before_and_after_state() -> None:
    plan, runs = shard_plan()
    assert any(runs) and not all(runs)  # a shard runs the sharded apps and records the rest
    steps = build_steps(ProjectState(), plan, runs)
    for migration, here in zip(plan, runs, strict=True):
        key = (migration.app_label, migration.name)
        assert (key in steps.operations) == here
        if here:
            pairs = steps.operations[key]
            assert len(pairs) == len(migration.operations)
            for (_, after), (before, _) in pairwise(pairs):
                assert after is before  # one operation's result is the next one's input
            for before, after in pairs:
                assert before is not after


def test_states_built_earlier_are_not_changed_by_later_migrations() -> None:
    plan, runs = shard_plan()
    steps = build_steps(ProjectState(), plan, runs)
    first = next(m for m, here in zip(plan, runs, strict=True) if here)
    _, after_first_op = steps.operations[(first.app_label, first.name)][0]
    final_models = {(m._meta.app_label, m._meta.model_name)
                    for m in steps.post_apps.get_models()}
    # Django's own loop changes one state in place: its first "after" would hold them all.
    assert len(after_first_op.models) < len(final_models)
    assert ("comments", "vote") in final_models
    assert ("comments", "vote") not in after_first_op.models


def test_the_first_caller_builds_while_the_others_wait_and_reuse() -> None:
    shared = SharedStates()
    builds = 0
    started = threading.Event()

    def build() -> Steps:
        nonlocal builds
        builds += 1
        started.wait(1.0)  # hold the slot while the other callers arrive
        return build_steps(ProjectState(), [], [])

    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = [pool.submit(shared.steps, "same start", build) for _ in range(8)]
        started.set()
        results = [f.result() for f in futures]
    assert builds == 1
    assert all(r is results[0] for r in results)
    assert shared.steps("other start", build) is not results[0]
    assert builds == 2


def test_a_failed_build_is_left_to_the_next_caller() -> None:
    shared = SharedStates()

    def broken() -> Steps:
        raise RuntimeError("rendering failed")

    with pytest.raises(RuntimeError):
        shared.steps("start", broken)
    steps = shared.steps("start", lambda: build_steps(ProjectState(), [], []))
    assert steps.operations == {}
