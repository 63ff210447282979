#!/usr/bin/env bash
# Build vitorch's wheel, install it into a fresh virtual environment (CPU torch first) and run the
# quickstart from outside the repository, so the installed package, not the source tree, is used.
#   bash scripts/check_wheel.sh
set -euo pipefail
cd "$(dirname "$0")/.."
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/build-env"
"$work/build-env/bin/python" -m pip install -q build
"$work/build-env/bin/python" -m build --wheel --outdir "$work/dist" .
python3 -m venv "$work/venv"
"$work/venv/bin/python" -m pip install -q torch==2.13.0
"$work/venv/bin/python" -m pip install -q "$(ls "$work"/dist/vitorch-*.whl)[examples]"
(cd "$work" && OMP_NUM_THREADS=1 "$work/venv/bin/python" "$OLDPWD/examples/quickstart.py" --quick --out "$work/out")
"$work/venv/bin/python" -c "import vitorch, sys; assert 'site-packages' in vitorch.__file__, vitorch.__file__; print('installed wheel OK:', vitorch.__file__)"
