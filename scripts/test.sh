#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks recipes examples
.venv/bin/mypy
# Two pytest-xdist workers, each test file on one (its module's server starts once);
# tests/conftest.py runs training ranks, Ray clusters and tests marked `alone` with nothing
# beside them. Flags given after these win: `-n 0` runs one process.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
