"""Steady traffic through nginx for the edge tests: a few threads sending requests until told
to stop, counting every answer that is not the expected one (and every connection error)."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.client import Response


@dataclass
class Load:
    """Runs `call` in `threads` threads until stopped; `ok` decides what counts as success."""

    call: Callable[[], Response]
    ok: Callable[[Response], bool]
    threads: int = 4
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _workers: list[threading.Thread] = field(default_factory=list)

    def __enter__(self) -> Load:
        for _ in range(self.threads):
            worker = threading.Thread(target=self._run, daemon=True)
            worker.start()
            self._workers.append(worker)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for worker in self._workers:
            worker.join(timeout=60)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = self.call()
                good, detail = self.ok(answer), f"{answer.status} {str(answer.body)[:200]}"
            except Exception as exc:
                # Refused, reset, timed out, cut short after its headers (http.client's
                # IncompleteRead), a body that does not parse: each a failed request too, and
                # none may end this thread uncounted.
                good, detail = False, f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.outcomes["ok" if good else "failed"] += 1
                if not good:
                    self.failures.append(detail)

    def total(self) -> int:
        with self._lock:
            return sum(self.outcomes.values())

    def wait_for(self, requests: int) -> None:
        """Until at least this many more requests have been answered (no clock involved)."""
        target = self.total() + requests
        while self.total() < target and any(w.is_alive() for w in self._workers):
            self._stop.wait(0.05)
