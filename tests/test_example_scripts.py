"""Smoke runs of every example: ``--quick`` finishes, writes its figures, ends with a JSON line.

Marked ``examples`` (excluded from the default run; ``scripts/test.sh`` runs them as a
separate step) so that no example breaks silently.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.py"))


@pytest.mark.examples
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_quick_run(script, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run(
        [sys.executable, str(script), "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    metrics = json.loads(lines[-1])
    assert isinstance(metrics, dict) and metrics
    # A smoke run's numbers are not results: its metrics line says so.
    assert metrics.get("quick_smoke_run_not_converged") is True, f"{script.name}: --quick run not labelled"
    figures = list(tmp_path.rglob("*.png"))
    assert figures, f"{script.name} wrote no PNG under --out"


@pytest.mark.examples
@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_marks_quick_figures(script):
    # A reader of the PNG never sees the metrics line: a smoke run's figure title says what it is.
    # (A source check: the titles themselves are inside the figures.)
    assert "(quick smoke run)" in script.read_text(), f"{script.name}: no figure title says (quick smoke run)"


def test_every_example_is_smoke_tested():
    assert EXAMPLES and all(p.suffix == ".py" for p in EXAMPLES)
