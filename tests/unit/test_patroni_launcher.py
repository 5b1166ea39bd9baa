"""Patroni is started through deploy/patroni.py's launcher, which shortens one of its module
constants: the pinned Patroni must still have it, and the launcher must still start Patroni."""

from __future__ import annotations

import subprocess

from deploy.patroni import PATRONI_LAUNCHER, PATRONI_PYTHON, STOP_POLLING_INTERVAL


def run_patroni_python(*argv: str) -> subprocess.CompletedProcess[str]:
    # deploy/setup.sh --deps-only (which the test command runs first) installs Patroni there.
    return subprocess.run([str(PATRONI_PYTHON), *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def test_the_pinned_patroni_has_the_constant_the_launcher_shortens() -> None:
    found = run_patroni_python("-c", "import patroni.postgresql as p; "
                                     "print(p.STOP_POLLING_INTERVAL)")
    assert found.returncode == 0, found.stderr
    assert float(found.stdout) > STOP_POLLING_INTERVAL  # Patroni's own value (1 s) is longer


def test_the_launcher_runs_patroni_with_the_shorter_poll() -> None:
    started = run_patroni_python("-c", PATRONI_LAUNCHER, "--version")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("patroni "), started.stdout
    # The constant as the launcher leaves it, before Patroni's own main() runs.
    setting = PATRONI_LAUNCHER.split("from patroni.__main__")[0]
    changed = run_patroni_python("-c", setting + "print(patroni.postgresql.STOP_POLLING_INTERVAL)")
    assert changed.returncode == 0, changed.stderr
    assert float(changed.stdout) == STOP_POLLING_INTERVAL
