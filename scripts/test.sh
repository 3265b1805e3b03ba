#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks recipes examples
.venv/bin/mypy
# Two workers, each taking whole files (tests/conftest.py keeps the files that start many
# processes apart): the tests wait on servers and processes about half their time, which the
# other worker fills.
exec .venv/bin/python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile "$@"
