"""docs/testing.md: every self-contained code block runs as written, and the test classes and
test functions it defines pass (the page promises a reader they would)."""

from __future__ import annotations

import contextlib
import inspect
import io
import re
from pathlib import Path

import pytest

from vitorch.testing import ModelTestCase

PAGE = Path(__file__).resolve().parents[2] / "docs" / "testing.md"


def _blocks():
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), re.S)
    programs = [b for b in blocks if b.startswith("import")]
    assert programs, "docs/testing.md has no self-contained code blocks"
    return [pytest.param(b, id=f"testing.md#{i}") for i, b in enumerate(programs)]


def _run_tests(namespace: dict) -> int:
    """Run what pytest would collect from the block: Test* ModelTestCase classes and test_* functions."""
    ran = 0
    for name, obj in list(namespace.items()):
        if inspect.isclass(obj) and name.startswith("Test") and issubclass(obj, ModelTestCase):
            for method in sorted(m for m in dir(obj) if m.startswith("test_")):
                getattr(obj(), method)()
                ran += 1
        elif inspect.isfunction(obj) and name.startswith("test_"):
            marks = [m for m in getattr(obj, "pytestmark", []) if m.name == "parametrize"]
            if not marks:
                obj()
            for mark in marks:
                argname, values = mark.args
                for value in values:
                    obj(**{argname: value})
            ran += 1
    return ran


@pytest.mark.parametrize("code", _blocks())
def test_snippet_runs_and_its_tests_pass(code):
    namespace: dict = {"__name__": "docs_snippet"}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, "<docs/testing.md>", "exec"), namespace)
        ran = _run_tests(namespace)
    if "(ModelTestCase)" in code:
        assert ran == 8, f"the ModelTestCase example ran {ran} tests; expected the 8 inherited ones"
