"""Running gevent scenarios in a process of their own: monkey-patching this one would change
every other test. A scenario module prints one JSON line, {name: {"result": ...} or
{"error": ...}}, last."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def run_scenarios(module: str) -> dict[str, Any]:
    """The scenarios of `module` (e.g. "tests.unit.gevent_pool"), run once in a patched process."""
    done = subprocess.run(
        [sys.executable, "-m", module],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def scenario(results: dict[str, Any], name: str) -> Any:
    outcome = results[name]
    assert "error" not in outcome, f"scenario {name} failed: {outcome.get('error')}"
    return outcome["result"]
