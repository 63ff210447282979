"""Zoos built on the vitorch core: VAEs, variational last layers, sparse GPs, state-space models.

Subpackages load on first use, so ``import vitorch`` stays light and the core
never imports a zoo.  ``vitorch.models.gp``, ``vitorch.models.ssm``,
``vitorch.models.vae`` and ``vitorch.models.last_layer`` are the zoos; the names
in ``_EXPORTS`` are re-exported here for convenience.
"""

from __future__ import annotations

import importlib

_SUBPACKAGES = ("gp", "ssm", "vae", "last_layer")

# name -> subpackage that defines it (re-exported lazily)
_EXPORTS = {
    "VAE": "vae",
    "BayesianLinearRegression": "last_layer",
    "VBLLRegression": "last_layer",
    "VBLLModel": "last_layer",
    "VBLLClassification": "last_layer",
    "VBLLGenerativeClassification": "last_layer",
    "VBLLDenseNoiseRegression": "last_layer",
    "VBLLStudentTRegression": "last_layer",
    "VBLLHeteroscedasticRegression": "last_layer",
}


def __getattr__(name: str):
    if name in _SUBPACKAGES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBPACKAGES) + list(_EXPORTS))
