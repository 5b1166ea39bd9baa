"""Gunicorn's HTTP/1 response, with the head and the first body bytes written in one send.

Gunicorn writes a response's status line and headers with one `sendall` and each body chunk
with another. A Django response is one chunk, so every answer took two system calls and two
TCP segments, and the client (nginx, a browser, wrk) woke up twice to read it. Worse, an app
host killed between the two sends left nginx holding headers it had already passed on to the
client, with no body to follow and no way to retry the request on another host: the client saw
a truncated answer (`IncompleteRead`).

Here `write` holds the head back and sends it together with the body bytes of that same call.
Everything else (framing, `Content-Length` and chunked bookkeeping, HEAD and 204/304 answers
without a body, `sendfile`, `close`) stays Gunicorn's: the head is written on its own, as
before, whenever anything but `write` asks for it, and at the end of a `write` that had no
body bytes to send with it.
"""

from __future__ import annotations

from typing import Any

from gunicorn.http import wsgi


class OneWriteResponse(wsgi.Response):
    sock: Any  # the client's socket, set by Gunicorn's constructor
    _holding = False
    _head = b""

    def send_headers(self) -> None:
        if not self._holding or self.headers_sent:
            super().send_headers()
            return
        sock, kept = self.sock, _Kept()
        self.sock = kept
        try:
            super().send_headers()  # builds the head, marks it sent, "writes" it to `kept`
        finally:
            self.sock = sock
        self._head = kept.data

    def _emit_body(self, data: bytes) -> None:
        head, self._head = self._head, b""
        if not head:
            super()._emit_body(data)
        elif self.chunked:
            self.sock.sendall(b"%s%X\r\n%s\r\n" % (head, len(data), data))
        else:
            self.sock.sendall(head + data)

    def write(self, arg: bytes) -> None:
        self._holding = True
        try:
            super().write(arg)
        finally:
            self._holding = False
            head, self._head = self._head, b""
            if head:  # no body bytes went with it (HEAD, a 304, an empty chunk): send it alone
                self.sock.sendall(head)


class _Kept:
    """Stands in for the socket while the head is built: keeps what would be sent."""

    def __init__(self) -> None:
        self.data = b""

    def sendall(self, data: bytes) -> None:
        self.data += data


def install() -> None:
    """Make Gunicorn build its HTTP/1 responses from OneWriteResponse in this process (a
    worker's, after fork): `wsgi.create` looks the class up in its module on every request."""
    wsgi.Response = OneWriteResponse
