"""Output of the commands that work on every shard at once (migrations, demo seeding):
per-database prefixed lines, a live progress display, tables. It sits in the lowest layer, with
the admin connections (shards.pg), so both the operations kit and the applications' commands
can use it.

Worker threads report through one Console, which serialises writes so lines never interleave.
On a terminal the last line is a status line, redrawn twice a second, naming what each running
database is doing and for how long; in a log (not a terminal) a heartbeat line says the same
every `heartbeat` seconds while anything runs, so a CI log shows a waiting shard too.
"""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from django.core.management.base import OutputWrapper

CLEAR_LINE = "\r\033[K"


class Console:
    def __init__(self, stdout: Any, aliases: Sequence[str], *, live: bool | None = None,
                 heartbeat: float = 10.0) -> None:
        self.stdout = stdout if isinstance(stdout, OutputWrapper) else OutputWrapper(stdout)
        self.aliases = list(aliases)
        self._index = {alias: i for i, alias in enumerate(self.aliases, 1)}
        isatty = getattr(self.stdout, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.heartbeat = heartbeat
        self._lock = threading.Lock()
        self._running: dict[str, tuple[str, float]] = {}  # alias -> (doing, since)
        self._started: dict[str, float] = {}
        self._done: set[str] = set()
        self._status_shown = False
        self._stop = threading.Event()

    def prefix(self, alias: str) -> str:
        return f"[{self._index.get(alias, 0)}/{len(self.aliases)} {alias}]"

    # -- Reporter ------------------------------------------------------------------------------

    def line(self, alias: str, text: str) -> None:
        self.write(f"{self.prefix(alias)} {text}")

    def status(self, alias: str, text: str | None) -> None:
        with self._lock:
            if text is None:
                self._running.pop(alias, None)
                self._done.add(alias)
            else:
                self._started.setdefault(alias, time.monotonic())
                self._running[alias] = (text, time.monotonic())

    # -- output --------------------------------------------------------------------------------

    def write(self, text: str = "") -> None:
        with self._lock:
            self._clear_status()
            self.stdout.write(text)
            self.stdout.flush()
            self._draw_status()

    def _clear_status(self) -> None:
        if self._status_shown:
            self.stdout.write(CLEAR_LINE, ending="")
            self._status_shown = False

    def _status_text(self) -> str:
        now = time.monotonic()
        parts = [
            f"{alias}: {doing} ({now - self._started.get(alias, since):.0f}s)"
            for alias, (doing, since) in sorted(self._running.items(),
                                                key=lambda item: self._index.get(item[0], 0))
        ]
        return f"{len(self._done)}/{len(self.aliases)} done; running: " + (
            " | ".join(parts) or "-"
        )

    def _draw_status(self) -> None:
        if not self.live or not self._running:
            return
        width = shutil.get_terminal_size((120, 20)).columns - 1
        self.stdout.write(self._status_text()[:width], ending="")
        self.stdout.flush()
        self._status_shown = True

    @contextmanager
    def running(self) -> Iterator[Console]:
        """Keep the live display (or the heartbeat) going while the block runs."""
        self._stop.clear()
        ticker = threading.Thread(target=self._tick, name="progress", daemon=True)
        ticker.start()
        try:
            yield self
        finally:
            self._stop.set()
            ticker.join()
            with self._lock:
                self._clear_status()
                self.stdout.flush()

    def _tick(self) -> None:
        last_beat = time.monotonic()
        interval = 0.5 if self.live else min(self.heartbeat, 1.0)
        while not self._stop.wait(interval):
            with self._lock:
                if self.live:
                    self._clear_status()
                    self._draw_status()
                elif self._running and time.monotonic() - last_beat >= self.heartbeat:
                    self.stdout.write(f"[progress] {self._status_text()}")
                    self.stdout.flush()
                    last_beat = time.monotonic()


def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain aligned columns; the last column is not padded (it holds long messages)."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))

    def fmt(cells: Sequence[str]) -> str:
        padded = [cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])]
        return "  ".join([*padded, cells[-1]]).rstrip()

    return [fmt(list(headers)), *(fmt(list(row)) for row in rows)]
