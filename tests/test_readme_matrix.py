"""README's objective x estimator table is what ``vt.check`` answers today."""

from __future__ import annotations

import runpy
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_matrix_is_generated_from_the_code():
    script = runpy.run_path(str(ROOT / "scripts" / "objective_matrix.py"))
    readme = (ROOT / "README.md").read_text()
    assert script["readme_section"](readme) == script["table"](), (
        "README.md's objective x estimator table is stale: run python scripts/objective_matrix.py --write"
    )


def test_every_python_block_in_the_readme_runs():
    import re

    import torch

    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert blocks
    threads = torch.get_num_threads()
    try:
        for i, block in enumerate(blocks):
            exec(compile(block, f"README.md block {i}", "exec"), {"__name__": "__readme__"})
    finally:
        torch.set_num_threads(threads)
