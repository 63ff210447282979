#!/usr/bin/env bash
# Run the test suite on a fresh machine: creates .venv, installs torch (CPU) and vitorch[dev], runs pytest.
# Extra arguments go to pytest (e.g. scripts/test.sh -m slow).
source "$(dirname "$0")/_env.sh" dev
export OMP_NUM_THREADS=1
python -m pytest -n 2 -q "$@"
