"""The fast tier: pure logic, no PostgreSQL, PgBouncer or Redis server.

Every test under tests/unit gets the `unit` marker, so `pytest -m unit` selects the same tests
as `pytest tests/unit`. tests/conftest.py still sets Django up (settings read the session's
topology file, which it writes without starting anything); no test here asks for its `topology`
fixture.
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.unit)
