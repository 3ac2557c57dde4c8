#!/usr/bin/env bash
# Set up everything (scripts/setup.sh), then run the test suite.
# Extra arguments go to pytest (default: -q). "No tests collected" is an error.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

./scripts/setup.sh

if [ "$#" -eq 0 ]; then
  set -- -q
fi

rc=0
.venv/bin/python -m pytest "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
  echo "[test] pytest collected no tests: treating as failure" >&2
fi
exit "$rc"
