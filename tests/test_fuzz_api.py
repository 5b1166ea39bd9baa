"""Schema-driven testing of the served OpenAPI schema, every phase Schemathesis has: the
schema's examples, coverage (boundary and invalid values of each parameter and field), fuzzing
(generated requests) and stateful (sequences that follow the schema's links: create a thread,
comment on it, reply, vote, edit, delete). No answer is a 5xx or takes over 5 s.

It is Schemathesis's own engine (what `schemathesis run` drives), configured here instead of
from a file: valid credentials in every request, the site fixed to a real one, a fixed seed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import pytest
import schemathesis
from schemathesis.config import SchemathesisConfig
from schemathesis.engine import Status, events

from tests.api_client import create_site

pytestmark = pytest.mark.usefixtures("django_db")

SEED = 20261125
MAX_RESPONSE_SECONDS = 5.0
PHASES = ("examples", "coverage", "fuzzing", "stateful")


@dataclass
class Run:
    statuses: Counter[int] = field(default_factory=Counter)
    by_phase: Counter[str] = field(default_factory=Counter)
    slowest: float = 0.0
    phases: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    stateful_links: int = 0


def run_engine(schema) -> Run:
    run = Run()
    for event in schemathesis.engine.from_schema(schema).execute():
        if isinstance(event, events.PhaseStarted) and event.payload is not None:
            run.stateful_links = event.payload.transitions_selected
        elif isinstance(event, events.PhaseFinished):
            run.phases[event.phase.name.value] = event.status.value
        elif isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            phase = getattr(event, "phase", None)
            phase_name = phase.value if phase is not None else "fuzzing"
            for interaction in event.recorder.interactions.values():
                if interaction.response is None:
                    continue
                run.statuses[interaction.response.status_code] += 1
                run.by_phase[phase_name] += 1
                run.slowest = max(run.slowest, interaction.response.elapsed)
            for case_id, checks in event.recorder.checks.items():
                for check in checks:
                    if check.status == Status.FAILURE:
                        case = event.recorder.cases[case_id].value
                        info = check.failure_info
                        run.failures.append(
                            f"{phase_name}: {check.name}: {case.method} {case.formatted_path} "
                            f"{info.failure.title if info else ''}")
        elif isinstance(event, events.NonFatalError | events.FatalError):
            run.errors.append(f"{type(event).__name__}: {getattr(event, 'value', event)}")
    return run


def test_every_phase_finds_no_5xx_and_no_slow_answer(service, topology) -> None:
    site = create_site(service, topology, prefix="fuzz").as_user("fuzzer", "Fuzz")
    config = SchemathesisConfig.from_dict({
        "seed": SEED,
        "base-url": service.url,
        "request-timeout": 30,
        "headers": {"X-Api-Key": site.key, "X-User-Token": site.user_token,
                    "X-Ops-Token": topology.ops_token()},
        # Every site operation on the real site: an unknown one is a single 404 answer.
        "parameters": {"path.site": site.slug},
        "generation": {"deterministic": True, "database": "none", "max-examples": 40},
        "checks": {"enabled": False, "not_a_server_error": {"enabled": True},
                   "max_response_time": MAX_RESPONSE_SECONDS},
        "phases": {"examples": {"enabled": True}, "coverage": {"enabled": True},
                   "fuzzing": {"enabled": True}, "stateful": {"enabled": True, "max-steps": 8}},
    })
    schema = schemathesis.openapi.from_url(f"{service.url}/api/openapi.json", config=config)
    # A thread's live events stay open by design (minutes, heartbeats only): tests/test_live.py
    # covers them; here they would hold every case that finds a real thread until it times out.
    schema = schema.exclude(path_regex=r"/events$")
    run = run_engine(schema)
    total = sum(run.statuses.values())
    print(f"schemathesis: {total} requests, by phase {dict(run.by_phase)}, statuses "
          f"{dict(sorted(run.statuses.items()))}, slowest {run.slowest:.3f} s, phases "
          f"{run.phases}, stateful links {run.stateful_links}")
    assert run.errors == []
    assert run.failures == []
    assert not [s for s in run.statuses if s >= 500]
    assert run.slowest < MAX_RESPONSE_SECONDS
    assert {p: run.phases.get(p) for p in PHASES} == dict.fromkeys(PHASES, "success")
    for phase in PHASES:
        assert run.by_phase[phase] > 0, (phase, run.by_phase)
    assert run.stateful_links > 0
    assert run.statuses[200] + run.statuses[201] + run.statuses[204] > 50  # not only refusals
