#!/usr/bin/env bash
# The test suite on a fresh machine: set up the environment, then run pytest.
set -e
source "$(dirname "$0")/env.sh"
cd "$L2L_ROOT"
exec python -m pytest "$@"
