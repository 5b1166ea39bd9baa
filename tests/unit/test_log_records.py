"""Log records still carry what the formats of this process write (project/request_log.py
turns off only what none of them does): Gunicorn's own lines write the process id as a number."""

from __future__ import annotations

import json
import logging

from gunicorn.glogging import Logger

import project.request_log  # noqa: F401  (what it switches off is process-wide)


def test_gunicorns_log_format_formats_a_record() -> None:
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "Booting worker",
                               None, None)
    line = logging.Formatter(Logger.error_fmt, Logger.datefmt).format(record)
    assert f"[{record.process}]" in line and isinstance(record.process, int)
    assert "Booting worker" in line


def test_json_lines_carry_the_time_in_utc_to_the_millisecond_and_the_extras() -> None:
    from datetime import UTC, datetime

    from project.request_log import JsonFormatter

    formatter = JsonFormatter()
    # Two records in one second and one in the next: the second's text is reused, never stale.
    for created in (1_767_225_599.9991, 1_767_225_599.0004, 1_767_225_600.25):
        record = logging.makeLogRecord({
            "name": "shardsvc.access", "levelno": logging.INFO, "levelname": "INFO",
            "msg": "%s %s", "args": ("GET", "/ü"), "created": created,
            "msecs": int((created - int(created)) * 1000) + 0.0,
            "status": 200, "site": None, "request": object(), "_private": 1, "when": datetime,
        })
        line = json.loads(formatter.format(record))
        expected = datetime.fromtimestamp(created, UTC).isoformat(
            timespec="milliseconds").replace("+00:00", "Z")
        assert line == {"timestamp": expected, "level": "INFO", "logger": "shardsvc.access",
                        "message": "GET /ü", "status": 200, "when": str(datetime)}
    assert "/ü" in formatter.format(record)  # not escaped: lines stay readable


def test_records_skip_what_no_format_here_writes() -> None:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
    assert record.thread is None and record.threadName is None and record.processName is None
