#!/usr/bin/env bash
# Run the test suite on a fresh machine: creates .venv, installs torch (CPU), vitorch[dev,gpu,examples], runs pytest.
# Step 1: the default suite (pytest -n 2; long checks are marked slow and excluded).
# Step 2: Triton kernel parity tests on the CPU under the Triton interpreter.
# Step 3: every example script with --quick (smoke runs: finishes, writes figures, prints JSON).
# Step 4: the documentation site builds in strict mode (no warnings).
# Step 5: the GPU check's dry run (scripts/gpu_check.sh --dry-run: its steps on the CPU, so it cannot rot).
# Extra arguments replace the steps with one pytest run (e.g. scripts/test.sh -m slow).
source "$(dirname "$0")/_env.sh" dev,gpu,examples,docs
export OMP_NUM_THREADS=1
if [ "$#" -gt 0 ]; then
    exec python -m pytest -n 2 -q "$@"
fi
python -m pytest -n 2 -q
# exit code 5 means "no tests collected", which is not a failure
TRITON_INTERPRET=1 python -m pytest -n 2 -q -m triton tests || [ "$?" -eq 5 ]
python -m pytest -n 2 -q -m examples tests/test_example_scripts.py
NO_MKDOCS_2_WARNING=1 mkdocs build --strict --quiet -d "${TMPDIR:-/tmp}/vitorch-site"
bash scripts/gpu_check.sh --dry-run --out "${TMPDIR:-/tmp}/vitorch-gpu-check"
