"""Even the shards out: `manage.py rebalance [--plan | --apply]`.

Measures every tenant's rows (and recent inserts) on the shard primaries, plans moves with
`migrations_tools.rebalance.plan_rebalance`, prints them with the expected per-shard result, and
with `--apply` runs them one at a time, each an ordinary online move
(`migrations_tools.moves.Mover`) under the cluster lock, with a pause between two moves. The
first failure stops it.
"""

from __future__ import annotations

import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from migrations_tools.lock import cluster_lock
from migrations_tools.move_jobs import MoveSettings, start_move
from migrations_tools.moves import Mover
from migrations_tools.rebalance import (
    WEIGHTS,
    Plan,
    format_plan,
    format_table,
    measure,
    plan_rebalance,
)
from migrations_tools.safety import parse_duration
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob, Tenant


def _seconds(text: str) -> float:
    try:
        value = parse_duration(text)
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    if value < 0:
        raise CommandError(f"{text!r}: durations must not be negative")
    return value


class Command(BaseCommand):
    help = ("Plan (default) or apply tenant moves that even the shards out, by measured tenant "
            "size (rows) or recent inserts. Moves never go to a shard closed to new tenants.")

    def add_arguments(self, parser: CommandParser) -> None:
        mode = parser.add_mutually_exclusive_group()
        mode.add_argument("--plan", action="store_true",
                          help="print the moves and the expected result, change nothing "
                               "(the default)")
        mode.add_argument("--apply", action="store_true",
                          help="run the planned moves, one at a time")
        parser.add_argument("--tolerance", type=float, default=0.1,
                            help="a shard within this fraction of the mean is balanced "
                                 "(default 0.1)")
        parser.add_argument("--max-moves", type=int, default=None,
                            help="plan at most this many moves")
        parser.add_argument("--by", choices=WEIGHTS, default="rows",
                            help="what to even out: rows (size, the default) or recent "
                                 "inserts (load)")
        parser.add_argument("--recent", default="1h",
                            help="the window of 'recent' inserts (default 1h)")
        parser.add_argument("--pause", default="5s",
                            help="pause between two moves with --apply (default 5s)")
        parser.add_argument("--grace", type=float, default=2.0,
                            help="seconds each move keeps the source rows after its flip "
                                 "(default 2)")
        parser.add_argument("--cutover-timeout", type=float, default=10.0,
                            help="longest write pause a move accepts (default 10 s)")
        parser.add_argument("--lock-wait", default="0s",
                            help="how long each move waits for the cluster lock (default: "
                                 "fail at once)")

    def handle(self, *args: Any, **options: Any) -> None:
        tolerance = options["tolerance"]
        if not 0 <= tolerance < 1:
            raise CommandError(f"--tolerance must be at least 0 and below 1, got {tolerance}")
        if options["max_moves"] is not None and options["max_moves"] < 0:
            raise CommandError("--max-moves must be 0 or more")
        recent = _seconds(options["recent"])
        pause = _seconds(options["pause"])
        lock_wait = _seconds(options["lock_wait"])
        plan = self.plan(options, recent)
        for line in format_plan(plan):
            self.stdout.write(line)
        if not options["apply"]:
            if plan.moves:
                self.stdout.write("plan only: nothing was changed (run with --apply to move)")
            return
        if not plan.moves:
            self.stdout.write(self.style.SUCCESS("nothing to move"))
            return
        settings = MoveSettings(grace_seconds=options["grace"],
                                cutover_timeout=options["cutover_timeout"])
        self.apply(plan, settings, pause=pause, lock_wait=lock_wait)
        self.stdout.write("")
        after = self.plan({**options, "max_moves": 0}, recent)
        for line in format_table(after, "measured after the moves:"):
            self.stdout.write(line)

    def plan(self, options: dict[str, Any], recent: float) -> Plan:
        try:
            measured = measure(recent_seconds=recent)
        except RuntimeError as exc:
            raise CommandError(f"{exc}; rebalance needs every shard primary") from exc
        for shard, rows in measured.stray.items():
            if rows:
                self.stdout.write(f"note: {shard} holds {rows} rows of tenants placed elsewhere "
                                  "(a move in progress or waiting for cleanup): not counted")
        return plan_rebalance(measured.tenants, measured.shards, tolerance=options["tolerance"],
                              max_moves=options["max_moves"], by=options["by"])

    def apply(self, plan: Plan, settings: MoveSettings, *, pause: float,
              lock_wait: float) -> None:
        total = len(plan.moves)
        done = 0
        for number, move in enumerate(plan.moves, 1):
            label = f"[{number}/{total} {move.slug}]"
            if number > 1 and pause:
                self.stdout.write(f"pausing {pause:g} s before the next move")
                time.sleep(pause)
            current = Tenant.objects.using(CONTROL_ALIAS).filter(id=move.tenant_id).values_list(
                "shard", flat=True).first()
            if current != move.source:
                self.stdout.write(f"{label} skipped: now on {current}, not {move.source} "
                                  "(placement changed since the plan)")
                continue
            self.stdout.write(f"{label} moving {move.source} -> {move.target} "
                              f"({move.rows} rows)")

            def say(message: str, label: str = label) -> None:
                self.stdout.write(f"{time.strftime('%H:%M:%S')} {label} {message}")

            try:
                with cluster_lock(f"move_tenant {move.slug} (rebalance {number}/{total})",
                                  wait=lock_wait) as lock:
                    job = start_move(move.tenant_id, move.target,
                                     reason=f"rebalance {number}/{total}")
                    job = Mover(job, settings=settings, progress=say,
                                still_locked=lock.ensure_held).run()
            except Exception as exc:
                raise CommandError(self.failure(move, number, total, done, exc)) from exc
            if job.state != MoveJob.State.DONE:
                raise CommandError(self.failure(move, number, total, done,
                                                RuntimeError(f"job {job.pk} ended {job.state}")))
            done += 1
            self.stdout.write(self.style.SUCCESS(
                f"{label} moved to {move.target} (job {job.pk}): write pause "
                f"{job.write_pause_ms} ms, verified {job.verified}"))
        self.stdout.write(self.style.SUCCESS(f"rebalance done: {done} of {total} move(s)"))

    @staticmethod
    def failure(move: Any, number: int, total: int, done: int, exc: BaseException) -> str:
        message = " ".join(str(exc).split()) or type(exc).__name__
        return (
            f"move {number}/{total} failed: {move.slug} {move.source} -> {move.target}: "
            f"{message}. {done} move(s) done before it; the rest were not started. "
            f"See `manage.py shard_status`; resume that move with `manage.py move_tenant "
            f"{move.slug} {move.target}` or roll it back with `manage.py move_tenant "
            f"{move.slug} --abort`, then run rebalance again (it plans from fresh sizes)."
        )
