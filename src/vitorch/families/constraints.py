"""Constraints that also reject infinities.

torch's ``positive`` accepts ``inf`` and ``real`` accepts ``±inf``; a variational
parameter that is infinite is always a bug upstream, so vitorch's families check
finiteness as well.  NaN fails every check here.

The same holds for the *supports*: an infinite value handed to ``log_prob`` is a bug
upstream too, so every family's support excludes ``±inf`` and ``log_prob(inf)``
raises the support's ``ValueError`` (when validating) instead of returning ``-inf``
for one family and NaN for another.  `Vector` is torch's ``independent(c, 1)``
without its reshape, so that empty values (zero samples) pass the check.  All are
registered with torch's ``biject_to`` and ``transform_to`` (as the supports they narrow).
"""

from __future__ import annotations

import torch
from torch.distributions import biject_to, constraints, transform_to, transforms


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


class _Simplex(constraints.Constraint):
    """torch's simplex with a tolerance on the sum that grows with the precision's unit.

    torch's fixed ``1e-6`` rejects a float16 Dirichlet's own draws, whose sum is one only
    to about ``K`` half-precision units.
    """

    event_dim = 1

    def check(self, value):
        tol = 1e-6
        if value.is_floating_point():
            tol = max(tol, value.shape[-1] * torch.finfo(value.dtype).eps)
        total = value.sum(-1, dtype=torch.float32 if value.dtype in (torch.float16, torch.bfloat16) else None)
        return (value >= 0).all(-1) & ((total - 1).abs() <= tol)

    def __repr__(self):
        return "Simplex()"


class Vector(constraints.Constraint):
    """``base`` in every coordinate of the last dimension (a support with event shape ``[D]``)."""

    def __init__(self, base: constraints.Constraint):
        self.base = base
        super().__init__()

    @property
    def is_discrete(self):
        return self.base.is_discrete

    @property
    def event_dim(self):
        return self.base.event_dim + 1

    def check(self, value):
        return self.base.check(value).all(-1)

    def __repr__(self):
        return f"Vector({self.base!r})"


finite_real = _FiniteReal()
positive_finite = _PositiveFinite()
finite_real_vector = constraints.independent(finite_real, 1)
positive_finite_vector = constraints.independent(positive_finite, 1)
finite_real_matrix = constraints.independent(finite_real, 2)
lower_cholesky_finite = _LowerCholeskyFinite()
real_vector_support = Vector(finite_real)  # the support of the Gaussian families: finite vectors
simplex = _Simplex()


def finite_support(c: constraints.Constraint) -> constraints.Constraint:
    """``c`` without its infinite points, for torch's ``real`` and ``positive``; other constraints unchanged."""
    if c is constraints.real:
        return finite_real
    if c is constraints.positive:
        return positive_finite
    return c


# torch's registries, so that biject_to(q.support) / transform_to(q.support) keep working
# for the families whose supports are defined here (the maps of real, positive and simplex).
@biject_to.register(_FiniteReal)
@transform_to.register(_FiniteReal)
def _to_finite_real(constraint):
    return transforms.identity_transform


@biject_to.register(_PositiveFinite)
@transform_to.register(_PositiveFinite)
def _to_positive_finite(constraint):
    return transforms.ExpTransform()


@biject_to.register(_Simplex)
def _biject_to_simplex(constraint):
    return transforms.StickBreakingTransform()


@transform_to.register(_Simplex)
def _transform_to_simplex(constraint):
    return transforms.SoftmaxTransform()


@biject_to.register(Vector)
def _biject_to_vector(constraint):
    return transforms.IndependentTransform(biject_to(constraint.base), 1)


@transform_to.register(Vector)
def _transform_to_vector(constraint):
    return transforms.IndependentTransform(transform_to(constraint.base), 1)
