"""Tenant moves in `/metrics`, set from the control database each time a scrape is answered
(not by the background sampler of `project.metrics`: a query per worker per second would cost
more than the news is worth).

    shardsvc_move_state{job,tenant,source,target,state}  1 for a move's current state, else 0
    shardsvc_move_rows_copied{job,tenant,source,target}  rows copied so far
    shardsvc_move_rows_total{job,tenant,source,target}   rows to copy (never below the copied)
    shardsvc_move_lag_bytes{job,tenant,source,target}    WAL bytes the target trails (0 once done)
    shardsvc_move_write_pause_seconds{job,tenant,source,target}  writes' pause at the cutover

Moves unfinished or finished within the hour are sampled. The worker answering a scrape sets
the values, so the most recent one is the current one (`livemostrecent`).
"""

from __future__ import annotations

from prometheus_client import Gauge

from migrations_tools.move_metrics import all_states, move_samples

_LABELS = ["job", "tenant", "source", "target"]
MOVE_STATE = Gauge("shardsvc_move_state", "1 for a tenant move's current state, 0 for the others.",
                   [*_LABELS, "state"], multiprocess_mode="livemostrecent")
MOVE_ROWS_COPIED = Gauge("shardsvc_move_rows_copied", "Rows a tenant move has copied so far.",
                         _LABELS, multiprocess_mode="livemostrecent")
MOVE_ROWS_TOTAL = Gauge("shardsvc_move_rows_total", "Rows a tenant move copies (grows with the "
                        "tenant's writes during the copy).", _LABELS,
                        multiprocess_mode="livemostrecent")
MOVE_LAG = Gauge("shardsvc_move_lag_bytes", "WAL bytes the move's target trails its source.",
                 _LABELS, multiprocess_mode="livemostrecent")
MOVE_PAUSE = Gauge("shardsvc_move_write_pause_seconds", "Writes paused at the move's cutover.",
                   _LABELS, multiprocess_mode="livemostrecent")


def sample_moves() -> None:
    states = all_states()
    for move in move_samples():
        labels = (str(move.job), move.tenant, move.source, move.target)
        for state in states:
            MOVE_STATE.labels(*labels, state).set(1 if state == move.state else 0)
        MOVE_ROWS_COPIED.labels(*labels).set(move.rows_copied)
        MOVE_ROWS_TOTAL.labels(*labels).set(move.rows_total)
        MOVE_LAG.labels(*labels).set(move.lag_bytes)
        if move.write_pause_seconds is not None:
            MOVE_PAUSE.labels(*labels).set(move.write_pause_seconds)
