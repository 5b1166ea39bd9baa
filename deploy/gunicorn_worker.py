"""The Gunicorn worker of the service: gevent, with Gunicorn's own error pages in JSON.

Gunicorn answers requests it cannot parse (a request line over `limit_request_line`, too many or
too large headers, a malformed request) itself, before Django sees them, with an HTML page.
Clients of a JSON API get the API's error shape instead: `{"error": code, "message": text}`.

Which status an error gets, what is logged and the access-log line stay Gunicorn's: its
`handle_error` runs as usual against a stand-in for the client socket that keeps what it would
send, and only the answer written to the real socket is replaced.
"""

from __future__ import annotations

import socket
from typing import Any

from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from project.errors import ErrorAnswer, code_for_status

MAX_MESSAGE = 300  # the parser's text can quote the request: keep the answer short
# How long and how much a refused request is read on before its connection closes.
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024


class _KeptWrites:
    """The client socket, except that what is sent is kept instead."""

    def __init__(self, client: socket.socket) -> None:
        self._client = client
        self.sent = bytearray()

    def sendall(self, data: bytes) -> None:
        self.sent += data

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


def json_error(status: int, reason: str, message: str) -> bytes:
    body = ErrorAnswer(status, code_for_status(status), message).body()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class JsonErrorGeventWorker(GeventWorker):
    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        kept = _KeptWrites(client)
        super().handle_error(req, kept, addr, exc)
        status_line = bytes(kept.sent).split(b"\r\n", 1)[0].decode("latin-1")
        parts = status_line.split(" ", 2)
        try:
            status = int(parts[1])
        except (IndexError, ValueError):
            return  # nothing (or nothing recognisable) was to be sent: send nothing
        reason = parts[2] if len(parts) > 2 else ""
        if status >= 500:
            message = "internal error; it has been logged"
        else:
            detail = str(exc)[:MAX_MESSAGE]
            message = f"{reason}: {detail}" if detail else reason
        try:
            util.write_nonblock(client, json_error(status, reason, message))
            _drain(client)
        except Exception:
            self.log.debug("Failed to send error message.")


def _drain(client: socket.socket) -> None:
    """Read what is left of the refused request before the socket closes. Closing with unread
    input sends a TCP reset, and a reset can discard the answer before the client reads it
    (seen with a 9,000-byte request line: the client got ECONNRESET, not the 414)."""
    left = LINGER_BYTES
    try:
        client.shutdown(socket.SHUT_WR)  # the answer is complete: the client sees its end
        client.settimeout(LINGER_SECONDS)
        while left > 0 and (chunk := client.recv(min(left, 65536))):
            left -= len(chunk)
    except OSError:
        pass  # the client went away or kept quiet: nothing more to wait for
