"""Constraints that also reject infinities.

torch's ``positive`` accepts ``inf`` and ``real`` accepts ``±inf``; a variational
parameter that is infinite is always a bug upstream, so vitorch's families check
finiteness as well.  NaN fails every check here.
"""

from __future__ import annotations

import torch
from torch.distributions import constraints


class _FiniteReal(constraints.Constraint):
    def check(self, value):
        return torch.isfinite(value)

    def __repr__(self):
        return "FiniteReal()"


class _PositiveFinite(constraints.Constraint):
    def check(self, value):
        return (value > 0) & torch.isfinite(value)

    def __repr__(self):
        return "PositiveFinite(x > 0 and finite)"


class _LowerCholeskyFinite(constraints.Constraint):
    event_dim = 2

    def check(self, value):
        lower = (value.tril() == value).flatten(-2).all(-1)
        finite = torch.isfinite(value).flatten(-2).all(-1)
        diag = value.diagonal(dim1=-2, dim2=-1)
        return lower & finite & ((diag > 0) & torch.isfinite(diag)).all(-1)

    def __repr__(self):
        return "LowerCholesky(lower triangular, finite, positive diagonal)"


finite_real = _FiniteReal()
positive_finite = _PositiveFinite()
finite_real_vector = constraints.independent(finite_real, 1)
positive_finite_vector = constraints.independent(positive_finite, 1)
finite_real_matrix = constraints.independent(finite_real, 2)
lower_cholesky_finite = _LowerCholeskyFinite()
