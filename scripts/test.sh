#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks recipes examples
.venv/bin/mypy
# Two pytest-xdist workers, each test file on one of them (a module's shared server starts
# once); the tests that must run alone (tests/conftest.py: training ranks, Ray clusters, those
# marked `alone`) wait for the other worker's test to end and hold it off until they are done.
# Flags passed here come after these and win (`-n 0` runs everything in one process).
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
