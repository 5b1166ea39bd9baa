"""Causal tokens (routers/causal.py): what a client may send back, and what it may not."""

from __future__ import annotations

import pytest
from django.core import signing

from routers import causal


def test_positions_and_tenant_versions_round_trip() -> None:
    value = causal.encode({"shard_0": 0x16B374D848, "default": 5}, {42: 7, 3: 1})
    assert causal.decode(value) == ({"shard_0": 0x16B374D848, "default": 5}, {42: 7, 3: 1})


def test_an_empty_token_round_trips() -> None:
    assert causal.decode(causal.encode({})) == ({}, {})


def test_encoding_is_canonical() -> None:
    """The same facts give the same token whatever the dict order, so clients can compare."""
    one = causal.encode({"shard_1": 9, "shard_0": 3}, {2: 1, 1: 1})
    other = causal.encode({"shard_0": 3, "shard_1": 9}, {1: 1, 2: 1})
    # "payload:timestamp:signature": the payload part must be byte for byte the same.
    assert one.split(":")[0] == other.split(":")[0]


def test_merge_keeps_the_highest_position_per_shard() -> None:
    assert causal.merge({"shard_0": 10, "shard_1": 4}, {"shard_0": 7, "shard_2": 1},
                        {"shard_1": 8}) == {"shard_0": 10, "shard_1": 8, "shard_2": 1}
    assert causal.merge() == {}


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not a token",
        "a:b:c",
        "\x00\xff",
        "." * 500,
    ],
)
def test_garbage_is_not_a_token(raw: str) -> None:
    assert causal.decode(raw) is None


def test_a_tampered_token_is_refused() -> None:
    value = causal.encode({"shard_0": 5})
    assert causal.decode(value[:-3] + ("abc" if not value.endswith("abc") else "xyz")) is None
    body, _, signature = value.rpartition(":")
    assert causal.decode(body + ":" + signature[::-1]) is None


def test_a_token_signed_with_another_key_or_salt_is_refused() -> None:
    payload = {"shard_0": format(1 << 40, "x")}
    assert causal.decode(signing.dumps(payload, salt="shardsvc.causal",
                                       key="a-key-that-is-not-the-services")) is None
    # The service's own key, but another purpose's salt (e.g. a user token).
    assert causal.decode(signing.dumps(payload, salt="shardsvc.user")) is None


def test_an_expired_token_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = signing.TimestampSigner.timestamp
    fresh = causal.encode({"shard_0": 5})

    def long_ago(self: signing.TimestampSigner) -> str:
        return signing.b62_encode(int(signing.b62_decode(real(self)))
                                  - causal.MAX_AGE_SECONDS - 1)

    monkeypatch.setattr(signing.TimestampSigner, "timestamp", long_ago)
    stale = causal.encode({"shard_0": 5})
    monkeypatch.undo()
    assert causal.decode(fresh) == ({"shard_0": 5}, {})
    assert causal.decode(stale) is None


@pytest.mark.parametrize(
    "payload",
    [
        ["shard_0", "5"],  # not a mapping
        "shard_0=5",
        {"shard_0": 5},  # a number where hex text belongs
        {"shard_0": "5z"},  # not hex
        {"shard_0": None},
        {"t:abc": "1"},  # a tenant id that is not a number
        {"t:": "1"},
    ],
)
def test_a_validly_signed_payload_of_the_wrong_shape_is_refused(payload: object) -> None:
    assert causal.decode(signing.dumps(payload, salt="shardsvc.causal", compress=True)) is None
