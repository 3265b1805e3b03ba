#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks recipes examples
.venv/bin/mypy
# One process: on two cores, timing-bound tests (scaling on queue length, training ranks)
# missed their marks beside a second pytest-xdist worker. `-n 2 --dist loadfile` may be
# passed on a larger machine (tests/conftest.py keeps the files that start many processes
# apart).
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
