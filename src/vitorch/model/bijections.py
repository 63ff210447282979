"""Maps from an unconstrained block of ``R^d`` onto one site's support, with their log-Jacobians.

Each site of a `vitorch.model.Model` gets one `Bijection`: it turns the
site's slice of the flat unconstrained vector, reshaped to ``[*sample, *unconstrained_shape]``,
into the constrained value ``[*sample, *shape]`` together with ``log|det J|`` summed
over the site (``[*sample]``), so that a density over the constrained value becomes a
density over ``R^D`` (Kucukelbir et al., 2017, sec. 2.3).

The maps are the ones torch's `torch.distributions.biject_to` registry gives
(so a user's ``biject_to.register`` works), with three additions torch lacks as
bijections and with cheap elementwise paths for the common scalar constraints:

==========================  ===========================================  =============================
constraint                  map from ``u``                               ``log|det J|``
==========================  ===========================================  =============================
``real``                    ``u``                                        0
``greater_than(a)``         ``a + exp(u)`` (``positive``: ``a = 0``)     ``sum u``
``less_than(b)``            ``b - exp(u)``                               ``sum u``
``interval(a, b)``          ``a + (b - a) sigmoid(u)``                   ``sum log(b-a) + log s(1-s)``
``lower_cholesky`` (n, n)   ``u`` fills the lower triangle, diagonal     ``sum_i u_ii``
                            exponentiated (``n(n+1)/2`` entries)
``positive_definite``       ``L L^T`` with ``L`` as above                ``n log 2 + sum_i (n-i+2) u_ii``
``ordered_vector`` (n,)     ``cumsum(u_1, exp(u_2), ..., exp(u_n))``     ``sum_{k>=2} u_k``
anything else               ``biject_to(constraint)`` (simplex: stick    torch's
                            breaking; ``corr_cholesky``: LKJ's map)
==========================  ===========================================  =============================

The positive-definite Jacobian is that of ``L -> L L^T`` on lower-triangular
coordinates, ``2^n prod_i L_ii^(n-i+1)`` (Gupta & Nagar, 2000, Theorem 1.28), times
the ``exp`` of the diagonal; densities of symmetric matrices are with respect to their
``n(n+1)/2`` free entries, as torch's ``Wishart.log_prob`` is.

References:
    Kucukelbir, Tran, Ranganath, Gelman & Blei, *Automatic Differentiation Variational
    Inference* (JMLR 2017), sec. 2.3.
    Stan Development Team, *Stan Reference Manual*, "Constraint transforms" (2024).
    Gupta & Nagar, *Matrix Variate Distributions* (Chapman & Hall, 2000), Theorem 1.28.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Transform, biject_to, constraints
from torch.nn import functional as F

__all__ = ["Bijection", "ordered_vector", "bijection_for"]


class _OrderedVector(constraints.Constraint):
    """Vectors with strictly increasing, finite entries (Stan's ``ordered``)."""

    event_dim = 1

    def check(self, value: Tensor) -> Tensor:
        finite = torch.isfinite(value).all(-1)
        return finite & (value[..., 1:] > value[..., :-1]).all(-1)

    def __repr__(self) -> str:
        return "OrderedVector()"


ordered_vector = _OrderedVector()
"""Constraint of strictly increasing vectors, e.g. the cut points of an ordinal regression."""


class Bijection:
    """One site's map ``u [*sample, *unconstrained_shape] -> x [*sample, *shape]`` and its log-Jacobian.

    Attributes:
        shape: the constrained value's shape.
        unconstrained_shape: the shape of its block of ``R^D``.
        size: ``prod(unconstrained_shape)``, the site's share of ``D``.
        constraint: the support, used to check initial values.

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.3.
    """

    def __init__(self, shape: torch.Size, unconstrained_shape: torch.Size, constraint: constraints.Constraint):
        self.shape = torch.Size(shape)
        self.unconstrained_shape = torch.Size(unconstrained_shape)
        self.size = math.prod(self.unconstrained_shape)
        self.constraint = constraint

    def forward_and_ladj(self, u: Tensor) -> tuple[Tensor, Tensor | float]:
        """``(x, log|det dx/du|)``: ``[*sample, *unconstrained_shape] -> ([*sample, *shape], [*sample])``."""
        raise NotImplementedError

    def inverse(self, x: Tensor) -> Tensor:
        """``u`` for a constrained ``x [*sample, *shape]``."""
        raise NotImplementedError

    def _site_sum(self, t: Tensor) -> Tensor:
        """Sum ``t [*sample, *unconstrained_shape]`` over the site's dimensions."""
        n = len(self.unconstrained_shape)
        return t.sum(tuple(range(-n, 0))) if n else t


class _Identity(Bijection):
    def forward_and_ladj(self, u):
        return u, 0.0

    def inverse(self, x):
        return x


class _Exp(Bijection):
    """``bound + sign * exp(u)``: ``greater_than`` (sign +1) and ``less_than`` (sign -1)."""

    def __init__(self, shape, constraint, bound, sign: float):
        super().__init__(shape, shape, constraint)
        self.bound, self.sign = bound, sign

    def forward_and_ladj(self, u):
        e = u.exp()
        x = e if _is_zero(self.bound) and self.sign > 0 else _like(self.bound, u) + self.sign * e
        return x, self._site_sum(u)

    def inverse(self, x):
        return (self.sign * (x - _like(self.bound, x))).log()


class _Sigmoid(Bijection):
    """``lower + (upper - lower) sigmoid(u)``."""

    def __init__(self, shape, constraint, lower, upper):
        super().__init__(shape, shape, constraint)
        self.lower, self.width = lower, upper - lower

    def forward_and_ladj(self, u):
        width = _like(self.width, u)
        x = _like(self.lower, u) + width * torch.sigmoid(u)
        # log s + log(1 - s) = -softplus(-u) - softplus(u), stable for large |u|.
        ladj = -F.softplus(-u) - F.softplus(u)
        log_width = math.log(width) if isinstance(width, float) else width.log()
        return x, self._site_sum(ladj + log_width)

    def inverse(self, x):
        return torch.logit((x - _like(self.lower, x)) / _like(self.width, x))


class _LowerCholesky(Bijection):
    """``n(n+1)/2`` reals -> a lower-triangular matrix with positive diagonal (``positive_definite``: ``L L^T``)."""

    def __init__(self, shape, constraint, covariance: bool):
        n = shape[-1]
        super().__init__(shape, shape[:-2] + (n * (n + 1) // 2,), constraint)
        self.n, self.covariance = n, covariance
        self.rows, self.cols = torch.tril_indices(n, n)
        # ladj weights of the raw diagonal: 1 for L's exp, plus (n - i + 1) (1-indexed i) for L -> L L^T.
        self.diag_weight = torch.arange(n + 1, 1, -1, dtype=torch.float64) if covariance else None

    def forward_and_ladj(self, u):
        n = self.n
        raw = u.new_zeros(*u.shape[:-1], n, n)
        raw[..., self.rows, self.cols] = u
        diag = raw.diagonal(dim1=-2, dim2=-1)
        L = raw.tril(-1) + torch.diag_embed(diag.exp())
        if not self.covariance:
            return L, _sum_trailing(diag.sum(-1), len(self.shape) - 2)
        x = L @ L.mT
        x = 0.5 * (x + x.mT)  # exactly symmetric, as torch's positive-definite checks expect
        ladj = (diag * self.diag_weight.to(u.dtype)).sum(-1) + n * math.log(2.0)
        return x, _sum_trailing(ladj, len(self.shape) - 2)

    def inverse(self, x):
        L = torch.linalg.cholesky(x) if self.covariance else x
        raw = L.tril(-1) + torch.diag_embed(L.diagonal(dim1=-2, dim2=-1).log())
        return raw[..., self.rows, self.cols]


class _Ordered(Bijection):
    def __init__(self, shape, constraint):
        super().__init__(shape, shape, constraint)

    def forward_and_ladj(self, u):
        steps = torch.cat([u[..., :1], u[..., 1:].exp()], -1)
        return steps.cumsum(-1), _sum_trailing(u[..., 1:].sum(-1), len(self.shape) - 1)

    def inverse(self, x):
        return torch.cat([x[..., :1], (x[..., 1:] - x[..., :-1]).log()], -1)


class _Torch(Bijection):
    """Any bijective `torch.distributions.Transform` from unconstrained space onto the support."""

    def __init__(self, shape, constraint, transform: Transform):
        super().__init__(shape, transform.inverse_shape(shape), constraint)
        self.transform = transform
        # Dimensions of u that the transform's own log-Jacobian does not sum over.
        self.extra = len(self.unconstrained_shape) - transform.domain.event_dim

    def forward_and_ladj(self, u):
        x = self.transform(u)
        ladj = self.transform.log_abs_det_jacobian(u, x)
        ladj = ladj.expand(u.shape[: u.dim() - self.transform.domain.event_dim])
        return x, _sum_trailing(ladj, self.extra)

    def inverse(self, x):
        return self.transform.inv(x)


def _sum_trailing(t: Tensor, n: int) -> Tensor:
    return t.sum(tuple(range(-n, 0))) if n > 0 else t


def _like(bound, t: Tensor):
    """A float bound as it is; a tensor bound in ``t``'s dtype and device."""
    return bound.to(t) if isinstance(bound, Tensor) else bound


def _is_zero(bound) -> bool:
    return isinstance(bound, (int, float)) and bound == 0


def _bound(value, shape: torch.Size, name: str):
    """A constraint's bound as a float, or as a float64 tensor broadcasting to the site's ``shape``."""
    if isinstance(value, Tensor):
        if value.dim() == 0:
            return float(value)
        try:
            torch.broadcast_shapes(value.shape, shape)
        except RuntimeError:
            raise ValueError(
                f"{name} of shape {tuple(value.shape)} does not broadcast to the site shape {tuple(shape)}"
            ) from None
        return value.detach().to(torch.float64)
    return float(value)


def _unwrap(constraint: constraints.Constraint) -> constraints.Constraint:
    while isinstance(constraint, constraints.independent):
        constraint = constraint.base_constraint
    return constraint


def bijection_for(
    constraint: constraints.Constraint, shape: torch.Size, transform: Transform | None = None
) -> Bijection:
    """The `Bijection` for a site of ``shape`` with ``constraint`` (or a user's ``transform``).

    Raises:
        ValueError: if the shape cannot hold the constraint (a simplex of shape ``()``, a
            non-square Cholesky factor) or no bijection is known for the constraint.
        TypeError: if ``transform`` is not a bijective torch ``Transform``.

    References:
        Kucukelbir et al., *Automatic Differentiation Variational Inference* (JMLR 2017), sec. 2.3;
        Stan Development Team, *Stan Reference Manual*, "Constraint transforms" (2024).
    """
    shape = torch.Size(shape)
    if transform is not None:
        if not isinstance(transform, Transform) or not transform.bijective:
            raise TypeError(
                f"Site transform must be a bijective torch.distributions.Transform; got {type(transform).__name__}"
            )
        try:
            return _Torch(shape, transform.codomain, transform)
        except (ValueError, RuntimeError, IndexError) as err:
            raise ValueError(f"Site transform {transform} cannot produce shape {tuple(shape)}: {err}") from None
    base = _unwrap(constraint)
    if len(shape) < constraint.event_dim:
        raise ValueError(
            f"a site with constraint {constraint} needs at least {constraint.event_dim} dimension(s); "
            f"got shape {tuple(shape)}"
        )
    if isinstance(base, type(constraints.real)):
        return _Identity(shape, shape, constraint)
    if isinstance(base, (constraints.greater_than, constraints.greater_than_eq)):
        return _Exp(shape, constraint, _bound(base.lower_bound, shape, "lower_bound"), 1.0)
    if isinstance(base, constraints.less_than):
        return _Exp(shape, constraint, _bound(base.upper_bound, shape, "upper_bound"), -1.0)
    if isinstance(base, (constraints.interval, constraints.half_open_interval)):
        lower, upper = _bound(base.lower_bound, shape, "lower_bound"), _bound(base.upper_bound, shape, "upper_bound")
        if not bool(torch.all(torch.as_tensor(upper) > torch.as_tensor(lower))):
            raise ValueError(f"interval constraint needs upper_bound > lower_bound; got {constraint}")
        return _Sigmoid(shape, constraint, lower, upper)
    if isinstance(base, (type(constraints.lower_cholesky), type(constraints.positive_definite))):
        if shape[-1] != shape[-2]:
            raise ValueError(f"a site with constraint {constraint} must end in a square [n, n]; got {tuple(shape)}")
        return _LowerCholesky(shape, constraint, covariance=isinstance(base, type(constraints.positive_definite)))
    if isinstance(base, _OrderedVector) or type(base).__name__ == "_OrderedVector":  # also Pyro's
        return _Ordered(shape, constraint)
    try:
        transform = biject_to(constraint)
    except NotImplementedError:
        raise ValueError(
            f"no bijection onto {constraint} is known; register one with torch.distributions.biject_to.register "
            "or give Site(transform=...)"
        ) from None
    try:
        return _Torch(shape, constraint, transform)
    except (ValueError, RuntimeError, IndexError) as err:
        raise ValueError(f"a site with constraint {constraint} cannot have shape {tuple(shape)}: {err}") from None
