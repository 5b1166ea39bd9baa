"""What `/metrics` says about tenant moves: one sample per recent move, read from the control
database when a scrape is answered (`project.metrics.sample_moves`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from django.db.models import Q

from migrations_tools.move_progress import clamp_progress, shown_lag
from shards.aliases import CONTROL_ALIAS
from shards.models import MoveJob

# Finished moves stay in the samples this long, so a scrape sees how each one ended.
RECENT = dt.timedelta(hours=1)


@dataclass(frozen=True)
class MoveSample:
    job: int
    tenant: str
    source: str
    target: str
    state: str
    rows_copied: int
    rows_total: int
    lag_bytes: int  # 0 once finished
    write_pause_seconds: float | None


def move_samples(*, now: dt.datetime | None = None) -> list[MoveSample]:
    """Unfinished moves and those finished within RECENT, oldest first."""
    since = (now or dt.datetime.now(dt.UTC)) - RECENT
    jobs = (MoveJob.objects.using(CONTROL_ALIAS).select_related("tenant")
            .filter(Q(state__in=MoveJob.ACTIVE_STATES) | Q(finished_at__gte=since)
                    | Q(updated_at__gte=since))
            .order_by("created_at"))
    samples = []
    for job in jobs:
        copied, total = clamp_progress(job.rows_copied, job.rows_total)
        samples.append(MoveSample(
            job=job.pk, tenant=job.tenant.slug, source=job.source, target=job.target,
            state=job.state, rows_copied=copied, rows_total=total,
            lag_bytes=shown_lag(job.state, job.lag_bytes) or 0,
            write_pause_seconds=(None if job.write_pause_ms is None
                                 else job.write_pause_ms / 1000),
        ))
    return samples


def all_states() -> list[str]:
    return [choice.value for choice in MoveJob.State]
