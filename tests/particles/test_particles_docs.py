"""Every Python block of docs/particles.md runs as written (each is a complete program)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

PAGE = Path(__file__).resolve().parents[2] / "docs" / "particles.md"
BLOCKS = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)


def test_the_page_has_code():
    assert len(BLOCKS) >= 4 and all(b.startswith("import") for b in BLOCKS)


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_block_runs(code):
    dtype, threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_default_dtype(torch.float32)  # as a reader runs it
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, str(PAGE), "exec"), {})
    finally:
        torch.set_default_dtype(dtype)
        torch.set_num_threads(threads)
