"""Every kernel has a torch reference, and every faster backend it has a parity test (default suite, no Triton)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import vitorch.kernels as vk

SRC = Path(vk.__file__).parent
TESTS = Path(__file__).parent
ALL_TESTS = TESTS.parent


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


def _fused_tests(op: str) -> list[str]:
    """Test files anywhere under ``tests/`` that call ``op`` with ``backend="fused"``."""
    return [
        str(p.relative_to(ALL_TESTS))
        for p in ALL_TESTS.rglob("test_*.py")
        if op in (text := p.read_text()) and ('backend="fused"' in text or "backend='fused'" in text)
    ]


def test_every_op_has_a_reference_and_a_parity_test_per_backend():
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
        if (SRC / package / "triton.py").exists() and f"test_parity_{op}" not in parity:
            missing.append(f"{op}: {package}/triton.py has no triton-marked test_parity_{op} in tests/kernels")
        if (SRC / package / "fused.py").exists() and not _fused_tests(op):
            missing.append(f"{op}: {package}/fused.py is exercised by no test calling it with backend='fused'")
    assert not missing, "\n".join(missing)
