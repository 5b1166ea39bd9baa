#!/usr/bin/env bash
# Run the whole test suite. It installs what is missing (as deploy/setup.sh --deps-only does),
# then each test session starts its own throwaway topology on its own ports and removes it.
set -uo pipefail
cd "$(dirname "$0")/.."
bash deploy/setup.sh --deps-only || exit 1
export PATH="$PATH:/usr/sbin"
.venv/bin/ruff check . || exit 1
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests: treating that as a failure" >&2
  exit 1
fi
exit "$rc"
