#!/usr/bin/env bash
# The project's test command: sets up on first use, then runs the fast test tier.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -m slow` for the slow tier).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
if [ "$#" -eq 0 ]; then set -- -m "not slow"; fi
exec .venv/bin/python -m pytest "$@"
