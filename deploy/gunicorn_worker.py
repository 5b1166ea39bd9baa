"""The Gunicorn worker of the service: gevent, with Gunicorn's own error pages in JSON,
keep-alive connections evened out between workers (deploy.accept_balance), and each answer's
head and body written in one send (deploy.one_write_response).

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

import gevent
from gevent.server import StreamServer
from gunicorn import util
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from deploy import one_write_response
from deploy.accept_balance import RECHECK_SECONDS, AcceptBalance
from project.errors import ErrorAnswer, code_for_status

_NEXT_TURN = 1e-6  # seconds: any positive time means "after the loop's next I/O poll"
# Connections a worker accepts in one turn of its loop, when the balance is on (gevent's own
# default; Gunicorn sets 1 for several workers, see _BalancedStreamServer.max_accept).
ACCEPT_PER_TURN = 100
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


class _BalancedStreamServer(StreamServer):
    """gevent's server as Gunicorn's gevent worker makes it, accepting only while its worker
    does not hold more connections than its share (deploy.accept_balance)."""

    balance: AcceptBalance | None = None
    _recheck: Any = None
    _max_accept: int = StreamServer.max_accept  # gevent's, until Gunicorn sets its own

    # Gunicorn's gevent worker sets max_accept = 1 when it runs several workers, so that one
    # worker does not take every waiting connection at once. The balance does that per
    # connection (do_read stops accepting as soon as this worker holds more than its share),
    # while one accept per turn of the loop caps how fast new connections get in at the turn's
    # length. Measured in a switchover under 200 writes/s: every client connection busy with a
    # held write, new writes came on new connections, and with the workers' loops turning every
    # 25-50 ms the two took about 40 connections a second: a write sent during the pause
    # waited up to 5.3 s to be accepted, longer than the pause itself (2 s).
    @property
    def max_accept(self) -> int:
        return ACCEPT_PER_TURN if self.balance is not None else self._max_accept

    @max_accept.setter
    def max_accept(self, value: int) -> None:
        self._max_accept = value

    def do_read(self) -> Any:
        balance = self.balance
        if balance is not None and balance.crowded():
            self.stop_accepting()  # the other workers take what arrives meanwhile
            if self._recheck is None:
                self._recheck = self.loop.timer(RECHECK_SECONDS)
            self._recheck.start(self._accept_again)
            return None
        accepted = super().do_read()
        if accepted and balance is not None:
            balance.opened()
        return accepted

    def _accept_again(self) -> None:
        if self.started:
            self.start_accepting()


class JsonErrorGeventWorker(GeventWorker):
    # Set by gunicorn.conf.py's pre_fork in the master, so the forked worker has them.
    accept_balance: AcceptBalance | None = None
    accept_slot: int | None = None

    def init_process(self) -> None:
        one_write_response.install()
        if self.accept_balance is not None and self.accept_slot is not None:
            self.accept_balance.attach(self.accept_slot)
            _BalancedStreamServer.balance = self.accept_balance
            # The server class Gunicorn's gevent worker builds its servers from, in this
            # worker process only.
            ggevent.StreamServer = _BalancedStreamServer
        super().init_process()

    def notify(self) -> None:
        super().notify()
        if self.accept_balance is not None:
            self.accept_balance.alive()

    def handle_request(self, listener_name: Any, req: Any, sock: Any, addr: Any) -> bool:
        keep_alive = bool(super().handle_request(listener_name, req, sock, addr))
        # Wait for the loop's next turn before reading the connection's next request. A
        # keep-alive client whose next request is already in the socket would otherwise be
        # served again at once, ahead of every other connection with a request waiting: under
        # load some connections were served in a tight loop while others waited (one worker,
        # /healthz: p50 0.7 ms, p90 833 ms). A sleep of 0 is not enough: gevent may resume the
        # greenlet before the loop polls for I/O again (its documentation says so); any
        # positive time waits for the next iteration.
        gevent.sleep(_NEXT_TURN)
        return keep_alive

    def handle(self, listener: Any, client: Any, addr: Any) -> None:
        try:
            super().handle(listener, client, addr)
        finally:
            if self.accept_balance is not None and self.accept_slot is not None:
                self.accept_balance.closed()

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
