#!/usr/bin/env bash
# Run the test suite in two tiers. It installs what is missing (as deploy/setup.sh --deps-only
# does), checks the tree with ruff, mypy and lint-imports (the layer contracts), then:
#   1. the fast tier, tests/unit: pure logic, no server; it must pass before anything starts;
#   2. the rest: each test session starts its own throwaway topology on its own ports and
#      removes it.
# Arguments go to pytest. When they name test paths, only those run (in one session); options
# alone (-x, -k, -m unit) apply to both tiers.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --deps-only || exit 1
export PATH="$PATH:/usr/sbin"
.venv/bin/ruff check . || exit 1
# The django-stubs plugin imports settings: the example topology and a development run's
# throwaway secret key let it load them without any server (nothing connects).
SHARDSVC_DEBUG=1 SHARDSVC_TOPOLOGY=deploy/topology.example.toml .venv/bin/mypy || exit 1
# Packages import only downwards: the layer contracts in pyproject.toml ([tool.importlinter]).
.venv/bin/lint-imports || exit 1
# Every alert rule fires in its unit test, and the recording rules with live roles have theirs
# (deploy/prometheus/tests; promtool is in Debian's prometheus package, which setup.sh installs).
promtool test rules deploy/prometheus/tests/*.yml || exit 1

no_tests() {
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
}

for arg in "$@"; do
  # A path, possibly with a node id (tests/test_x.py::test_y).
  if [[ "$arg" != -* && -e "${arg%%::*}" ]]; then
    .venv/bin/python -m pytest "$@"
    rc=$?
    [ "$rc" -eq 5 ] && no_tests
    exit "$rc"
  fi
done

started=$(date +%s%N)
.venv/bin/python -m pytest tests/unit "$@"
fast_rc=$?
elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
printf 'fast tier (tests/unit): %d.%01d s\n' $((elapsed_ms / 1000)) $((elapsed_ms % 1000 / 100))
if [ "$elapsed_ms" -gt 30000 ]; then
  echo "warning: the fast tier took over its 30 s budget; keep servers and sleeps out of it" >&2
fi
if [ "$fast_rc" -ne 0 ] && [ "$fast_rc" -ne 5 ]; then
  echo "the fast tier failed: not starting the integration tests" >&2
  exit "$fast_rc"
fi
# Without options the fast tier must have tests; an option (-k, -m) may select none of them.
[ "$fast_rc" -eq 5 ] && [ "$#" -eq 0 ] && no_tests

.venv/bin/python -m pytest --ignore=tests/unit "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  # A selection that matched only fast-tier tests (e.g. -m unit) is fine; nothing at all is not.
  if [ "$fast_rc" -eq 5 ] || [ "$#" -eq 0 ]; then
    no_tests
  fi
  exit 0
fi
exit "$rc"
