"""deploy/one_write_response.py: each answer's head goes out with its first body bytes in one
send, and the bytes on the wire are exactly Gunicorn's own."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi

from deploy.one_write_response import OneWriteResponse


@dataclass
class Request:
    method: str = "GET"
    version: tuple[int, int] = (1, 1)

    def should_close(self) -> bool:
        return False


@dataclass
class Sends:
    """The client socket: what each send put on the wire."""

    sent: list[bytes] = field(default_factory=list)

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))


def answer(cls: type[wsgi.Response], method: str, status: str, headers: list[tuple[str, str]],
           body: list[bytes]) -> list[bytes]:
    sock = Sends()
    response = cls(Request(method), sock, Config())
    response.start_response(status, headers)
    for chunk in body:
        response.write(chunk)
    response.close()
    return sock.sent


JSON = [("Content-Type", "application/json")]
CASES = {
    "sized": ("GET", "200 OK", [*JSON, ("Content-Length", "11")], [b'{"ok":true}']),
    "sized, two chunks": ("GET", "200 OK", [*JSON, ("Content-Length", "6")], [b"abc", b"def"]),
    "chunked": ("GET", "200 OK", JSON, [b"abc", b"defg"]),
    "empty chunk first": ("GET", "200 OK", JSON, [b"", b"abc"]),
    "no body at all": ("GET", "200 OK", [("Content-Length", "0")], []),
    "empty body": ("GET", "200 OK", [("Content-Length", "0")], [b""]),
    "HEAD": ("HEAD", "200 OK", [*JSON, ("Content-Length", "11")], [b'{"ok":true}']),
    "304": ("GET", "304 Not Modified", [], [b""]),
    "204": ("DELETE", "204 No Content", [], [b""]),
}


@pytest.mark.parametrize("case", CASES)
def test_the_same_bytes_as_gunicorn_sends(case: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("gunicorn.util.http_date", lambda *_: "Tue, 01 Dec 2026 00:00:00 GMT")
    method, status, headers, body = CASES[case]
    ours = answer(OneWriteResponse, method, status, headers, body)
    theirs = answer(wsgi.Response, method, status, headers, body)
    assert b"".join(ours) == b"".join(theirs)
    assert len(ours) <= len(theirs)


def test_a_one_chunk_answer_is_one_send() -> None:
    body = b'{"items": []}'
    sent = answer(OneWriteResponse, "GET", "200 OK",
                  [*JSON, ("Content-Length", str(len(body)))], [body])
    assert len(sent) == 1
    head, _, rest = sent[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and rest == body
    # Gunicorn's own: the head, then the body.
    assert len(answer(wsgi.Response, "GET", "200 OK",
                      [*JSON, ("Content-Length", str(len(body)))], [body])) == 2


def test_a_chunked_answer_sends_its_head_with_the_first_chunk() -> None:
    sent = answer(OneWriteResponse, "GET", "200 OK", JSON, [b"abc", b"de"])
    assert len(sent) == 3  # head and first chunk, second chunk, the last (empty) chunk
    assert sent[0].endswith(b"\r\n\r\n3\r\nabc\r\n")
    assert sent[1:] == [b"2\r\nde\r\n", b"0\r\n\r\n"]


def test_an_answer_without_body_bytes_sends_its_head_once() -> None:
    for method, status in (("HEAD", "200 OK"), ("GET", "304 Not Modified")):
        sent = answer(OneWriteResponse, method, status, [("Content-Length", "5")], [b"hello"])
        assert len(sent) == 1 and sent[0].endswith(b"\r\n\r\n"), (method, sent)
