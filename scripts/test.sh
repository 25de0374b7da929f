#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment, lint (ruff), then run pytest.
set -e
source "$(dirname "$0")/env.sh"
cd "$L2L_ROOT"
python -m ruff check .
exec python -m pytest "$@"
