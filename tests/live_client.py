"""A minimal Server-Sent Events reader for tests and benchmarks: one thread per stream."""

from __future__ import annotations

import contextlib
import http.client
import json
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Stream:
    url: str
    headers: dict[str, str]
    events: list[tuple[str, dict, float]] = field(default_factory=list)  # (id, event, at)
    opened: threading.Event = field(default_factory=threading.Event)
    status: int = 0
    last_id: str = ""

    def start(self) -> Stream:
        parts = urlsplit(self.url)
        self.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        self.thread = threading.Thread(target=self._read, args=(parts,), daemon=True)
        self.thread.start()
        return self

    def _read(self, parts) -> None:
        try:
            self.conn.request("GET", f"{parts.path}?{parts.query}", headers=self.headers)
            answer = self.conn.getresponse()
            self.status = answer.status
            if answer.status != 200:
                self.opened.set()
                return
            event_id, data = "", ""
            while True:
                line = answer.fp.readline()
                if not line:
                    return
                text = line.decode().rstrip("\n")
                if text.startswith(": open"):
                    self.opened.set()
                elif text.startswith("id: "):
                    event_id = text[4:]
                    self.last_id = event_id
                elif text.startswith("data: "):
                    data = text[6:]
                elif text == "" and data:
                    self.events.append((event_id, json.loads(data), time.monotonic()))
                    data = ""
        except OSError:
            return
        finally:
            self.opened.set()

    def close(self) -> None:
        sock = self.conn.sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(2)
        self.conn.close()
        self.thread.join(timeout=5)
