"""vitorch: modular variational inference for PyTorch.

Families are torch distributions; objectives are pure functions of log-weights
``log_w [K, *batch] -> [*batch]``; estimators decide how gradients flow; and
:func:`loss` joins a log-joint, a family, an objective and an estimator into a
scalar surrogate whose value is the bound and whose gradient is the estimator's.
"""

import importlib as _importlib

from . import diagnostics, estimators, flows, objectives
from ._autocast import full_precision
from ._version import __version__
from .families import (
    Beta,
    ConditionalFlow,
    DiagNormal,
    DiagNormalHead,
    Dirichlet,
    Family,
    Flow,
    FullRankNormal,
    FullRankNormalHead,
    Gamma,
    LowRankNormal,
    LowRankNormalHead,
    RSVIBeta,
    RSVIDirichlet,
    RSVIGamma,
    stopped,
)
from .expect import expect
from .loss import LossOutput, check, loss
from .training import History, fit
from .model import VI, AutoGuide, Model, Posterior, Site

# The zoos and data sets load on first use: the core never imports them.
_LAZY = ("models", "data", "kernels")


def __getattr__(name: str):
    if name in _LAZY:
        return _importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "__version__",
    "diagnostics",
    "estimators",
    "flows",
    "models",
    "data",
    "kernels",
    "objectives",
    "loss",
    "check",
    "expect",
    "full_precision",
    "LossOutput",
    "fit",
    "Model",
    "Site",
    "AutoGuide",
    "Posterior",
    "VI",
    "History",
    "Family",
    "stopped",
    "DiagNormal",
    "FullRankNormal",
    "LowRankNormal",
    "Flow",
    "ConditionalFlow",
    "Gamma",
    "Beta",
    "Dirichlet",
    "RSVIGamma",
    "RSVIBeta",
    "RSVIDirichlet",
    "DiagNormalHead",
    "FullRankNormalHead",
    "LowRankNormalHead",
]
