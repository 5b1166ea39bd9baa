"""The Redis parser's readiness check (shards.redis_parser), on the topology's Redis: it tells an
idle connection from one with an answer waiting and from one the server closed, as redis-py's
own check does, and the cache's connections use it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from redis import ConnectionPool, Redis
from redis.connection import Connection
from redis.exceptions import ConnectionError as RedisConnectionError

from deploy.topology import LocalTopology
from shards.redis_parser import ReadyCheckParser
from tests.client import wait_until


@pytest.fixture
def connection(topology: LocalTopology) -> Iterator[Connection]:
    pool = ConnectionPool(port=topology.layout.redis_port, parser_class=ReadyCheckParser)
    client = Redis(connection_pool=pool)
    conn = client.connection_pool.get_connection()
    try:
        yield conn
    finally:
        client.connection_pool.release(conn)
        client.close()


def test_the_cache_uses_the_parser(django_db: None) -> None:
    from django_redis import get_redis_connection

    pool = get_redis_connection("default").connection_pool
    assert pool.connection_kwargs["parser_class"] is ReadyCheckParser
    conn = pool.get_connection()
    try:
        assert isinstance(conn._parser, ReadyCheckParser)
        assert not conn.can_read()
    finally:
        pool.release(conn)


def test_an_idle_connection_has_nothing_to_read(connection: Connection) -> None:
    assert connection.can_read() is False
    assert connection.can_read(timeout=0.05) is False  # the waiting check, redis-py's own


def test_an_answer_waiting_is_seen_and_read(connection: Connection) -> None:
    connection.send_command("PING")
    wait_until(lambda: connection.can_read(), timeout=5, what="the PING's answer")
    assert connection.read_response() == b"PONG"
    assert connection.can_read() is False
    # Two answers, one read: the second is already in the parser's buffer, not the socket's.
    connection.send_packed_command(connection.pack_commands([("PING",), ("ECHO", "x")]))
    wait_until(lambda: connection.can_read(), timeout=5, what="the answers")
    assert connection.read_response() == b"PONG"
    assert connection.can_read() is True
    assert connection.read_response() == b"x"
    assert connection.can_read() is False


def test_a_connection_the_server_closed_is_not_taken_for_an_idle_one(
        topology: LocalTopology, connection: Connection) -> None:
    connection.send_command("CLIENT", "ID")
    client_id = connection.read_response()
    admin = Redis(port=topology.layout.redis_port)
    try:
        assert admin.client_kill_filter(_id=client_id) == 1
    finally:
        admin.close()

    def closed_seen() -> bool:
        try:
            connection.can_read()
        except RedisConnectionError:
            return True
        return False

    wait_until(closed_seen, timeout=5, what="the closed connection refused")
