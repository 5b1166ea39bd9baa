"""Management commands run as an operator runs them against a test topology: `manage.py` in a
subprocess with that topology's environment."""

from __future__ import annotations

import subprocess
import sys

from deploy.topology import PROJECT_DIR, LocalTopology


def manage(topology: LocalTopology, *args: str, timeout: float = 300,
           **env: str) -> subprocess.CompletedProcess[str]:
    """`manage.py <args>` with the topology's environment plus `env`; output captured. A failing
    command does not raise: tests assert its exit code and output."""
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=PROJECT_DIR, env=topology.service_env(**env),
        capture_output=True, text=True, timeout=timeout, check=False,
    )
