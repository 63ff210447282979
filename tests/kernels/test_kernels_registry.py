"""Every kernel has a torch reference, a Triton module and a parity test (default suite, no Triton needed)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import vitorch.kernels as vk

SRC = Path(vk.__file__).parent
TESTS = Path(__file__).parent


def _parity_tests() -> dict[str, str]:
    """``{test function name: file}`` for functions in modules marked ``pytest.mark.triton``."""
    found = {}
    for path in TESTS.glob("test_*.py"):
        text = path.read_text()
        if "pytestmark = pytest.mark.triton" not in text:
            continue
        for node in ast.parse(text).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_parity_"):
                found[node.name] = path.name
    return found


def test_every_kernel_package_is_registered():
    packages = {p.name for p in SRC.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
    assert packages == set(vk.OPS.values()), f"unregistered kernel packages: {packages - set(vk.OPS.values())}"


def test_every_op_has_a_reference_a_triton_module_and_a_parity_test():
    parity = _parity_tests()
    missing = []
    for op, package in vk.OPS.items():
        if not callable(getattr(vk, op, None)):
            missing.append(f"{op}: not exported by vitorch.kernels")
        reference = importlib.import_module(f"vitorch.kernels.{package}.reference")
        if not any(
            callable(v) and getattr(v, "__module__", "") == reference.__name__ for v in vars(reference).values()
        ):
            missing.append(f"{op}: {package}/reference.py defines no function")
        if not (SRC / package / "triton.py").exists():
            missing.append(f"{op}: {package}/triton.py is missing")
        if f"test_parity_{op}" not in parity:
            missing.append(f"{op}: no triton-marked test_parity_{op} in tests/kernels")
    assert not missing, "\n".join(missing)
