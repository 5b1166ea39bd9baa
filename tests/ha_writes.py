"""A writer through PgBouncer for the failover tests and benchmark: consecutive ids into
`ha_writes`, one autocommit write at a time, reconnecting after an error, keeping what was
acknowledged and when (so acknowledged ids can be checked against what the new leader holds)."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field

import psycopg

from shards import pg

CREATE_SQL = "CREATE TABLE IF NOT EXISTS ha_writes (id bigint PRIMARY KEY)"
GRANT_SQL = "GRANT ALL ON ha_writes TO app"


@dataclass
class Writer:
    dsn: str
    start_id: int
    # Writes per second at most (0: as fast as they are acknowledged).
    rate: float = 0.0
    # (id, when the write was sent, when it was acknowledged)
    acked: list[tuple[int, float, float]] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def __enter__(self) -> Writer:
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=30)

    def run(self) -> None:
        conn = None
        next_id = self.start_id
        interval = 1 / self.rate if self.rate else 0.0
        while not self.stop.is_set():
            sent = time.monotonic()
            try:
                if conn is None:
                    conn = pg.connect(self.dsn, connect_timeout=2)
                conn.execute("INSERT INTO ha_writes (id) VALUES (%s)", [next_id])
                self.acked.append((next_id, sent, time.monotonic()))
            except psycopg.Error as exc:
                self.errors.append((time.monotonic(), str(exc).strip()[:120]))
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.02)
            next_id += 1
            if interval:
                self.stop.wait(max(0.0, interval - (time.monotonic() - sent)))
        if conn is not None:
            conn.close()

    def sent_after(self, moment: float) -> list[float]:
        """When the writes sent after `moment` were acknowledged (a write in flight at
        `moment` may still be acknowledged after it: it committed before)."""
        return [acked for _, sent, acked in self.acked if sent > moment]

    @property
    def ids(self) -> set[int]:
        return {i for i, _, _ in self.acked}


def longest_gap(writer: Writer, since: float) -> float:
    """The longest wait between two acknowledgements ending after `since`: what this client
    saw as the write pause. A write in flight may wait in PgBouncer's queue and succeed on the
    new leader, and a killed postmaster's backends still commit for a moment, so neither the
    first error nor the first write sent after a fault tells it."""
    acks = [acked for _, _, acked in writer.acked]
    return max((b - a for a, b in itertools.pairwise(acks) if b > since), default=0.0)
