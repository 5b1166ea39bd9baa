"""How many connections a worker accepts in one turn of its loop (deploy/gunicorn_worker.py):
Gunicorn's one per turn for several workers is lifted while the accept balance shares them
out, and kept when a worker runs without it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from deploy.accept_balance import AcceptBalance
from deploy.gunicorn_worker import ACCEPT_PER_TURN, _BalancedStreamServer


@pytest.fixture
def balance() -> Iterator[AcceptBalance]:
    view = AcceptBalance(slots=2)
    slot = view.claim()
    assert slot is not None
    view.attach(slot)
    _BalancedStreamServer.balance = view
    yield view
    _BalancedStreamServer.balance = None


def server() -> _BalancedStreamServer:
    # Not started: nothing is bound or listened on.
    made = _BalancedStreamServer(("127.0.0.1", 0), handle=lambda *args: None)
    made.max_accept = 1  # what Gunicorn's gevent worker sets when it runs several workers
    return made


def test_with_the_balance_a_turn_accepts_every_waiting_connection(balance) -> None:
    assert server().max_accept == ACCEPT_PER_TURN > 1


def test_without_the_balance_gunicorns_setting_stands() -> None:
    assert _BalancedStreamServer.balance is None
    assert server().max_accept == 1
