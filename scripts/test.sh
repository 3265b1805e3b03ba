#!/usr/bin/env bash
# The whole test suite: sets everything up, then lint, type check and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check src tests benchmarks recipes examples
.venv/bin/mypy
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
