"""How a move's progress and lag read to an operator (shard_status, the admin, /metrics).

Rows copied can pass the rows counted when the move began: the tenant keeps writing during the
copy. The total shown then grows with the copy, so progress never reads above its total.
A finished move has no lag: the last lag measured before the cutover is history, not a state.
A cutover's write pause is shown step by step.
"""

from __future__ import annotations

import time

FINISHED_STATES = frozenset({"done", "aborted", "failed"})


def clamp_progress(copied: int, total: int) -> tuple[int, int]:
    """(copied, total) for display: never negative, and the total at least the rows copied."""
    copied = max(copied, 0)
    return copied, max(total, copied)


def progress_text(copied: int, total: int) -> str:
    copied, total = clamp_progress(copied, total)
    if total:
        return f"{copied}/{total} rows ({copied / total:.0%})"
    return f"{copied} rows"


def shown_lag(state: str, lag_bytes: int) -> int | None:
    """The lag to show: None once the move has finished."""
    return None if state in FINISHED_STATES else max(lag_bytes, 0)


class CutoverSteps:
    """Where a cutover's write pause goes: milliseconds per step since the previous one, from
    the fence on (the job's report keeps them; the flip's progress line prints them)."""

    def __init__(self, fenced: float) -> None:
        self._last = fenced
        self.ms: dict[str, float] = {}

    def done(self, step: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.ms[step] = round((now - self._last) * 1000, 1)
        self._last = now

    def text(self) -> str:
        return ", ".join(f"{step} {ms:.1f}" for step, ms in self.ms.items())
