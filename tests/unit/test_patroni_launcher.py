"""Patroni is started through deploy/patroni_launch.py, which shortens two of its waits in a
switchover: the pinned Patroni must still have both places, the launcher must still start
Patroni, and the catch-up check it polls must answer as Patroni's own would."""

from __future__ import annotations

import json
import subprocess

from deploy.patroni import PATRONI_LAUNCHER, PATRONI_PYTHON

# The launcher's definitions without its start of Patroni (its `__name__ == "__main__"` block).
DEFINITIONS = ("__name__ = 'patroni_launch'\n"
               f"exec(compile({PATRONI_LAUNCHER!r}, 'launch', 'exec'))\n")


def run_patroni_python(*argv: str) -> subprocess.CompletedProcess[str]:
    # deploy/setup.sh --deps-only (which the test command runs first) installs Patroni there.
    return subprocess.run([str(PATRONI_PYTHON), *argv], capture_output=True, text=True,
                          timeout=60, check=False)


def patroni_json(code: str) -> object:
    done = run_patroni_python("-c", DEFINITIONS + code)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_pinned_patroni_has_both_places_the_launcher_changes() -> None:
    found = patroni_json(
        "import inspect, json, patroni.ha as ha, patroni.postgresql as pg\n"
        "callbacks = [c for m in (ha.Ha.demote, ha.Ha.shutdown) for c in m.__code__.co_consts\n"
        "             if inspect.iscode(c) and c.co_name in SHUTDOWN_CALLBACKS]\n"
        "print(json.dumps({'poll': pg.STOP_POLLING_INTERVAL, 'time': ha.time is time,\n"
        "  'callbacks': [(c.co_name, 'sleep' in c.co_names,\n"
        "                 'is_failover_possible' in c.co_names) for c in callbacks],\n"
        "  'lsn': 'cluster_lsn' in inspect.signature(ha.Ha.is_failover_possible).parameters}))\n"
    )
    assert isinstance(found, dict)
    assert found["poll"] > 0.1  # Patroni's own (1 s) is longer than the launcher's
    assert found["time"] and found["lsn"]
    # The leader's demotion and Patroni's own shutdown each sleep, then check the candidate.
    assert sorted(found["callbacks"]) == [["_on_shutdown", True, True],
                                          ["on_shutdown", True, True]]


def test_the_launcher_applies_both_and_starts_patroni() -> None:
    applied = patroni_json("import json; print(json.dumps(shorten_waits()))")
    assert applied == ["stop polling", "catch-up check"]
    started = run_patroni_python("-c", PATRONI_LAUNCHER, "--version")
    assert started.returncode == 0, started.stderr
    assert started.stdout.startswith("patroni "), started.stdout


def test_a_shutdown_callback_no_longer_sleeps_and_other_sleeps_do() -> None:
    seconds = patroni_json(
        "import json, patroni.ha\n"
        "shorten_waits()\n"
        "def on_shutdown():\n"
        "    patroni.ha.time.sleep(1)\n"
        "def loop():\n"
        "    patroni.ha.time.sleep(0.2)\n"
        "took = []\n"
        "for f in (on_shutdown, loop):\n"
        "    t = time.monotonic(); f(); took.append(time.monotonic() - t)\n"
        "print(json.dumps(took))\n"
    )
    assert isinstance(seconds, list)
    assert seconds[0] < 0.1 and seconds[1] >= 0.2


def test_the_catch_up_check_is_polled_until_a_member_has_the_position() -> None:
    # Patroni's check, standing in: True from its third call on, or never.
    answers = patroni_json(
        "import json\n"
        "calls = []\n"
        "def check(self, *, cluster_lsn=0, exclude_failover_candidate=False):\n"
        "    calls.append(cluster_lsn)\n"
        "    return self == 'catches up' and len(calls) >= 3\n"
        "out = {}\n"
        "for who in ('catches up', 'never'):\n"
        "    calls.clear(); t = time.monotonic()\n"
        "    ok = polled(check)(who, cluster_lsn=42)\n"
        "    out[who] = [ok, len(calls), time.monotonic() - t]\n"
        "calls.clear()\n"
        "out['no position'] = [polled(check)('never'), len(calls)]\n"
        "print(json.dumps(out))\n"
    )
    assert isinstance(answers, dict)
    ok, calls, _ = answers["catches up"]
    assert ok and calls == 3
    ok, calls, took = answers["never"]
    # Given up after Patroni's own second, having asked all along.
    assert not ok and calls >= 10 and 1.0 <= took < 1.5
    assert answers["no position"] == [False, 1]  # any other check: once, as Patroni makes it
