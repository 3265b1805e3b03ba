#!/usr/bin/env bash
# The main job on the default model: sets everything up, then runs `surge demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
exec .venv/bin/surge demo "$@"
