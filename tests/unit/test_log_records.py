"""Log records still carry what the formats of this process write (project/request_log.py
turns off only what none of them does): Gunicorn's own lines write the process id as a number."""

from __future__ import annotations

import logging

from gunicorn.glogging import Logger

import project.request_log  # noqa: F401  (what it switches off is process-wide)


def test_gunicorns_log_format_formats_a_record() -> None:
    record = logging.LogRecord("gunicorn.error", logging.INFO, __file__, 1, "Booting worker",
                               None, None)
    line = logging.Formatter(Logger.error_fmt, Logger.datefmt).format(record)
    assert f"[{record.process}]" in line and isinstance(record.process, int)
    assert "Booting worker" in line
