#!/usr/bin/env bash
# The GPU check (see scripts/gpu_check.py): kernel parity on CUDA in float32/float16/bfloat16, the
# kernels' compilation, their benchmark beside a device-to-device copy, and the IWAE-50 VAE step
# with the kernels on and off; one JSON results file named after the GPU in benchmarks/results/.
#
#   bash scripts/gpu_check.sh              # on a GPU machine (about 5-8 minutes)
#   bash scripts/gpu_check.sh --dry-run    # anywhere: the same steps on the CPU under the Triton interpreter
#
# It uses the Python that already holds a CUDA build of torch and Triton (PYTHON, default python3;
# a GPU image usually has both) and never installs torch: pip would pull whichever build it finds.
# What else it needs (pytest) it installs only when missing.  vitorch itself is read from src/.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ] && [ "${1:-}" = "--dry-run" ] && [ -x .venv/bin/python ]; then
    PYTHON=.venv/bin/python   # the project's environment (scripts/test.sh) holds torch, triton and pytest
fi
PYTHON="${PYTHON:-python3}"
"$PYTHON" -c "import torch, triton" 2>/dev/null || {
    echo "gpu_check: $PYTHON lacks torch or triton; on a GPU machine use the Python of its CUDA torch (PYTHON=...)" >&2
    exit 2
}
"$PYTHON" -c "import pytest" 2>/dev/null || "$PYTHON" -m pip install -q pytest
exec "$PYTHON" scripts/gpu_check.py "$@"
