"""The import graph: ``kernels/`` is a leaf, the core never imports a zoo, and no import hides in a function.

A function-level import of a vitorch module is how an import cycle gets hidden: the
module graph still has the cycle, it only fails later or in another order.  These tests
keep the layering visible (issue 15): ``kernels`` <- ``families`` <- ``flows`` <- the core
<- the zoos (``models``), each importing only what sits below it, at module top.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import vitorch

SRC = Path(vitorch.__file__).parent

# What kernels/ must never load: the families, flows, the zoos, training and the core's loss maths.
NOT_BELOW_KERNELS = (
    "vitorch.families",
    "vitorch.flows",
    "vitorch.models",
    "vitorch.training",
    "vitorch.loss",
    "vitorch.objectives",
    "vitorch._objectives_base",
    "vitorch._objectives_iw",
    "vitorch._objectives_power",
    "vitorch.estimators",
)

# Function-level imports of vitorch modules that are deliberate, as (file relative to src/vitorch,
# function, imported module as written) -> the reason.  Every other one fails the scan below.
ALLOWED_LATE_IMPORTS = {
    ("__init__.py", "__getattr__", "importlib.import_module"): (
        "every public name loads on first use, so importing one part (vitorch.kernels) loads only that part"
    ),
    ("models/__init__.py", "__getattr__", "importlib.import_module"): (
        "each zoo loads on first use of vt.models.<zoo>, so one zoo does not import the others"
    ),
}


def _late_triton_import(rel: str, module: str) -> bool:
    """``from .triton import ...`` / ``from . import triton`` inside a kernel op: Triton must not load at import."""
    parts = rel.split("/")
    return len(parts) == 3 and parts[0] == "kernels" and parts[2] == "__init__.py" and module in (".triton", ".")


def _loaded_modules(code: str) -> list[str]:
    """The ``vitorch.*`` modules a fresh interpreter holds after running ``code``."""
    probe = code + "\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith('vitorch'))))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_kernels_is_a_leaf():
    # Exactly what a user types: vitorch/__init__.py loads nothing eagerly, so this shows what
    # vitorch.kernels itself imports.
    loaded = _loaded_modules("import vitorch.kernels")
    assert "vitorch.kernels.dispatch" in loaded  # the probe did import the package
    bad = [m for m in loaded if any(m == p or m.startswith(p + ".") for p in NOT_BELOW_KERNELS)]
    assert not bad, f"vitorch.kernels loads modules above it: {bad}"


def test_vt_loss_and_vt_expect_stay_functions_when_their_modules_load():
    code = "import vitorch as vt, vitorch.loss, vitorch.expect\nassert callable(vt.loss) and callable(vt.expect)\n"
    code += "assert not isinstance(vt.loss, type(vt)) and vt.DiagNormal.__name__ == 'DiagNormal'"
    _loaded_modules(code)


def test_import_vitorch_loads_no_zoo():
    loaded = _loaded_modules("import vitorch")
    zoos = [m for m in loaded if m == "vitorch.models" or m.startswith("vitorch.models.")]
    assert not zoos, f"`import vitorch` loads zoo modules: {zoos}"


def _late_imports() -> list[tuple[str, int, str, str]]:
    """``(file, line, function, module)`` for every vitorch import inside a function under src/vitorch."""
    found = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        tree = ast.parse(path.read_text(), filename=str(path))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, ast.ImportFrom):
                    module = "." * node.level + (node.module or "")
                    if node.level or module.split(".")[0] == "vitorch":
                        found.append((rel, node.lineno, fn.name, module))
                elif isinstance(node, ast.Import):
                    found += [(rel, node.lineno, fn.name, a.name) for a in node.names if a.name.startswith("vitorch")]
                elif (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "import_module"
                    and not (
                        node.args and isinstance(node.args[0], ast.Constant) and "vitorch" not in node.args[0].value
                    )
                ):
                    # importlib.import_module(<not a literal third-party name>): a vitorch module by construction.
                    found.append((rel, node.lineno, fn.name, "importlib.import_module"))
    return found


def test_no_function_level_import_of_a_vitorch_module():
    unexplained = [
        f"{rel}:{line} in {fn}(): {module}"
        for rel, line, fn, module in _late_imports()
        if not _late_triton_import(rel, module) and (rel, fn, module) not in ALLOWED_LATE_IMPORTS
    ]
    assert not unexplained, (
        "function-level imports of vitorch modules (import at module top; if that makes a cycle, "
        "move the code so the dependency points one way):\n" + "\n".join(unexplained)
    )


def test_the_scan_sees_the_deliberate_ones():
    # Guards the scanner itself: the Triton back ends and the lazy zoo loader must be found.
    found = _late_imports()
    assert any(_late_triton_import(rel, module) for rel, _, _, module in found)
    assert any((rel, fn, module) in ALLOWED_LATE_IMPORTS for rel, _, fn, module in found)
