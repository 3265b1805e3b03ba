#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Lint and type check run while setup's side venvs still install (mypy's first run takes a
# minute of CPU, the installs mostly wait on downloads).
./scripts/setup.sh bash -c '.venv/bin/ruff check src tests benchmarks recipes examples && .venv/bin/mypy'
# One process by default. `-n 2 --dist loadfile` spreads the files over two pytest-xdist
# workers (tests/conftest.py runs training ranks, Ray clusters and tests marked `alone` with
# nothing beside them): 0.81x the time here, but on two cores load-bound tests still missed
# their marks in one run of three (the ladder's, the elastic scaling one).
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
