"""vitorch: modular variational inference for PyTorch.

Families are torch distributions; objectives are pure functions of log-weights
``log_w [K, *batch] -> [*batch]``; estimators decide how gradients flow; and
:func:`loss` joins a log-joint, a family, an objective and an estimator into a
scalar surrogate whose value is the bound and whose gradient is the estimator's.
"""

from . import diagnostics, estimators, objectives
from ._version import __version__
from .families import (
    DiagNormal,
    DiagNormalHead,
    Family,
    FullRankNormal,
    FullRankNormalHead,
    LowRankNormal,
    LowRankNormalHead,
    stopped,
)
from .loss import LossOutput, check, loss

__all__ = [
    "__version__",
    "diagnostics",
    "estimators",
    "objectives",
    "loss",
    "check",
    "LossOutput",
    "Family",
    "stopped",
    "DiagNormal",
    "FullRankNormal",
    "LowRankNormal",
    "DiagNormalHead",
    "FullRankNormalHead",
    "LowRankNormalHead",
]
