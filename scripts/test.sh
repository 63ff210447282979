#!/usr/bin/env bash
# Run the test suite on a fresh machine: creates .venv, installs torch (CPU), vitorch[dev,gpu], runs pytest.
# Step 1: the default suite (pytest -n 2; long checks are marked slow and excluded).
# Step 2: Triton kernel parity tests on the CPU under the Triton interpreter.
# Extra arguments go to step 1's pytest (e.g. scripts/test.sh -m slow).
source "$(dirname "$0")/_env.sh" dev,gpu
export OMP_NUM_THREADS=1
python -m pytest -n 2 -q "$@"
if [ "$#" -eq 0 ]; then
    # exit code 5 means "no tests collected" (no kernels yet), which is not a failure
    TRITON_INTERPRET=1 python -m pytest -n 2 -q -m triton tests || [ "$?" -eq 5 ]
fi
