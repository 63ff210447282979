#!/usr/bin/env bash
# Run the quickstart on a fresh machine: creates .venv, installs torch (CPU) and vitorch[examples], fits.
source "$(dirname "$0")/_env.sh" examples
python examples/quickstart.py "$@"
