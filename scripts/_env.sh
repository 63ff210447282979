# Shared set-up for scripts/*.sh: a project virtual environment with torch's CPU wheel.
# Usage: source scripts/_env.sh EXTRAS   (EXTRAS like "dev" or "examples")
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
VENV="${VITORCH_VENV:-.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# shellcheck disable=SC1091
source "$VENV/bin/activate"
# torch first, pinned to the CPU build: an unpinned torch would pull a multi-GB CUDA build.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[$1]"
