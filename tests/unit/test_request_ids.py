"""Request ids the service makes (project/request_log.py) are what uuid.uuid4().hex was: 32
lower-case hex digits of a random version-4 UUID, and a well-formed id from the caller is kept."""

from __future__ import annotations

import uuid

from project.request_log import new_request_id, request_id_from


def test_a_new_request_id_is_a_random_version_4_uuid_in_hex() -> None:
    made = {new_request_id() for _ in range(2000)}
    assert len(made) == 2000
    for raw in made:
        parsed = uuid.UUID(hex=raw)
        assert parsed.hex == raw
        assert parsed.version == 4
        assert parsed.variant == uuid.RFC_4122


def test_a_callers_id_is_kept_when_well_formed_and_replaced_when_not() -> None:
    assert request_id_from("trace-1:abc") == "trace-1:abc"
    for bad in (None, "", "-starts-with-dash", "x" * 129, "spaces are not ids"):
        replaced = request_id_from(bad)
        assert replaced != bad and uuid.UUID(hex=replaced).version == 4
