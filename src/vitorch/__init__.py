"""vitorch: modular variational inference for PyTorch.

Families are torch distributions; objectives are pure functions of log-weights
``log_w [K, *batch] -> [*batch]``; estimators decide how gradients flow; and
`loss` joins a log-joint, a family, an objective and an estimator into a
scalar surrogate whose value is the bound and whose gradient is the estimator's.

Every public name loads on first use, so ``import vitorch.kernels`` (or any one
part) imports that part and what it needs, nothing else, and the core never
imports a zoo.
"""

import importlib as _importlib
import sys as _sys
import types as _types

from ._version import __version__

_FAMILIES = (
    "Beta",
    "ConditionalFlow",
    "DiagNormal",
    "DiagNormalHead",
    "Dirichlet",
    "Family",
    "Flow",
    "FullRankNormal",
    "FullRankNormalHead",
    "Gamma",
    "LowRankNormal",
    "LowRankNormalHead",
    "MixFlow",
    "RSVIBeta",
    "RSVIDirichlet",
    "RSVIGamma",
    "RelaxedBernoulli",
    "RelaxedBernoulliStraightThrough",
    "RelaxedOneHotCategorical",
    "RelaxedOneHotCategoricalStraightThrough",
    "stopped",
)
_SUBMODULES = (
    "diagnostics",
    "estimators",
    "flows",
    "objectives",
    "models",
    "data",
    "kernels",
    "quadrature",
    "unscented",
    "silent",
    "particles",
    "optim",
    "gvi",
    "sbi",
)

# public name -> (module under vitorch, attribute of it; None for the module itself)
_EXPORTS = {
    "loss": ("loss", "loss"),
    "check": ("loss", "check"),
    "LossOutput": ("_output", "LossOutput"),
    "expect": ("expect", "expect"),
    "full_precision": ("_autocast", "full_precision"),
    "fit": ("training", "fit"),
    "History": ("training", "History"),
    **{name: ("model", name) for name in ("Model", "Site", "AutoGuide", "Posterior", "VI")},
    **{name: ("families", name) for name in _FAMILIES},
    **{name: ("gvi", name) for name in ("FBGVI", "pathfinder", "multipath_pathfinder")},
    **{name: (name, None) for name in _SUBMODULES},
}


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = _importlib.import_module(f"{__name__}.{module}")
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


class _Package(_types.ModuleType):
    """The ``vitorch`` module.  Importing a submodule binds it to its package's attribute of
    the same name; ``vitorch.loss`` and ``vitorch.expect`` are the functions, not their
    modules (``sys.modules`` still holds the modules)."""

    def __setattr__(self, name: str, value) -> None:
        module, attribute = _EXPORTS.get(name, (None, None))
        if attribute is not None and isinstance(value, _types.ModuleType):
            value = getattr(value, attribute)
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package

__all__ = ["__version__", *_EXPORTS]
