#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest; fails if any fails.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
unset PYTHONDONTWRITEBYTECODE  # setup.sh installs without bytecode: compiled at first import
.venv/bin/ruff check src tests benchmarks recipes examples
# The type check runs beside pytest at the lowest CPU priority, on the cores the tests leave
# idle (waiting for servers, sleeping through a time mark); its report follows pytest's.
types=$(mktemp)
nice -n 19 .venv/bin/mypy > "$types" 2>&1 &
mypy_pid=$!
trap 'kill "$mypy_pid" 2>/dev/null || true; rm -f "$types"' EXIT
# Two pytest-xdist workers, each test file on one (its module's server starts once);
# tests/conftest.py runs training ranks and Ray clusters beside unit tests only and tests marked
# `alone` beside nothing. Flags given after these win: `-n 0` runs one process.
status=0
.venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@" || status=$?
wait "$mypy_pid" || status=1
cat "$types"
exit "$status"
