"""WAL positions as ints and their printed form; global ids and their creation time."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from shards.global_ids import (
    EPOCH_MS,
    GENERATOR_BITS,
    SEQUENCE_BITS,
    first_id_at,
    id_millis,
    split_id,
)
from shards.lsn import LSN_MAX, format_lsn, parse_lsn


def test_lsn_known_value_and_bad_input() -> None:
    assert parse_lsn("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert parse_lsn("16/b374d848") == parse_lsn("16/B374D848")
    assert parse_lsn(" 0/0 ") == 0
    for bad in ["", "16", "16/", "/1", "G/0", "1/2/3", "123456789/0", "1 /2"]:
        with pytest.raises(ValueError, match="invalid LSN"):
            parse_lsn(bad)
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(123)  # type: ignore[arg-type]
    for bad_value in [-1, 1 << 64, 1.5, True]:
        with pytest.raises(ValueError, match="invalid LSN"):
            format_lsn(bad_value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "value"),
    [("0/0", 0), ("0/1", 1), ("1/0", 1 << 32), ("16/B374D848", 0x16B374D848),
     ("FFFFFFFF/FFFFFFFF", LSN_MAX)],
)
def test_lsn_prints_as_postgres_does_and_round_trips(text: str, value: int) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == text  # upper-case hex, no leading zeros: pg_lsn's output


def test_positions_order_as_numbers_not_as_text() -> None:
    # "9/0" sorts after "10/0" as text; as positions it comes first.
    assert parse_lsn("9/0") < parse_lsn("10/0")
    assert parse_lsn("0/FFFFFFFF") + 1 == parse_lsn("1/0")


def test_id_time_and_first_id_at_agree() -> None:
    made = datetime(2026, 3, 1, 12, 0, 0, 123000, tzinfo=UTC)
    millis = int(made.timestamp() * 1000)
    first = first_id_at(millis)
    assert first == (millis - EPOCH_MS) << (GENERATOR_BITS + SEQUENCE_BITS)
    assert id_millis(first) == millis
    # Any generator and sequence made in that millisecond: the same time, ids at or above it.
    later_in_ms = first | (42 << SEQUENCE_BITS) | 1023
    assert id_millis(later_in_ms) == millis
    assert split_id(later_in_ms) == (millis, 42, 1023)
    assert first_id_at(millis + 1) > later_in_ms
    assert first_id_at(EPOCH_MS - 5_000) == 0  # before the epoch: every id is newer
