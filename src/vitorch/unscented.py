"""The unscented transform: 2D + 1 weighted sigma points of a Gaussian guide.

For ``q = N(mu, Sigma)`` in D dimensions with a square root ``A A^T = Sigma`` (columns
``a_j``), the sigma points and their weights are

    z_0 = mu,                       pi_0 = kappa / (D + kappa),
    z_j = mu + sqrt(D + kappa) a_j,  z_{D+j} = mu - sqrt(D + kappa) a_j,
    pi_j = pi_{D+j} = 1 / (2 (D + kappa)),       j = 1..D.

They match q's mean and covariance, so ``sum_k pi_k f(z_k) = E_q[f]`` for every ``f``
quadratic in z (and every odd moment, by symmetry).  In particular ``log q`` is
quadratic, so the entropy term is always exact, and for a log-joint quadratic in z (a
linear-Gaussian decoder and a Gaussian prior) the unscented ELBO *is* the ELBO, as a
function of the guide's and the model's parameters, so its gradient is the exact
gradient.  For other log-joints it is a deterministic, zero-variance approximation.

``kappa``: the Unscented Autoencoder's implementation scales the points by
``sqrt(D + 1e-3)``, i.e. ``kappa = 1e-3`` (the centre point's weight nearly zero), which
is the default here.  Julier & Uhlmann's ``kappa = 3 - D`` matches the Gaussian's
fourth moments along each axis but makes ``pi_0`` negative for D > 3; the scaled
transform's ``(alpha, kappa)`` is this rule with ``kappa' = alpha^2 (D + kappa) - D``.
Any ``kappa > -D`` is accepted (the ELBO's weighted mean takes a negative ``pi_0``).

Only the ELBO is served: its integrand ``log w`` is quadratic for a linear-Gaussian
model, where the rule is exact.  The log-space bounds (IWAE, Rényi, CUBO) average
``w^t = exp(t log w)``, which no such model makes quadratic; their weighted forms would
follow the rule's error, not a bound, so `unscented` refuses them.

References:
    Julier & Uhlmann, *A New Extension of the Kalman Filter to Nonlinear Systems*
    (SPIE 1997) and *Unscented Filtering and Nonlinear Estimation* (Proc. IEEE 2004);
    Janjoš, Rosenbaum, Dolgov & Zöllner, *Unscented Autoencoder* (ICML 2023).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, LowRankMultivariateNormal, MultivariateNormal, Normal

from ._particles import Estimator, Particles, _family_name
from .families.gaussian import DiagNormal, FullRankNormal, LowRankNormal
from .quadrature import WeightedRule

__all__ = ["sigma_points", "unscented", "expect", "PAPER_KAPPA"]

PAPER_KAPPA = 1e-3  # the Unscented Autoencoder's sqrt(D + 1e-3) scaling


def _root(q: Distribution) -> Tensor | None:
    """A square root ``A [*batch, D, D]`` of q's covariance (diagonal or Cholesky), or ``None``."""
    if isinstance(q, DiagNormal):
        return torch.diag_embed(q.scale)
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal) and q.reinterpreted_batch_ndims == 1:
        loc, scale = torch.broadcast_tensors(q.base_dist.loc, q.base_dist.scale)
        return torch.diag_embed(scale)
    if isinstance(q, (FullRankNormal, LowRankNormal, MultivariateNormal, LowRankMultivariateNormal)):
        return q.scale_tril
    return None


def _weights(dim: int, kappa: float, like: Tensor) -> Tensor:
    """``[2D + 1]`` unscented weights (centre first)."""
    w = torch.full((2 * dim + 1,), 1.0 / (2.0 * (dim + kappa)), dtype=like.dtype, device=like.device)
    w[0] = kappa / (dim + kappa)
    return w


def sigma_points(q: Distribution, kappa: float = PAPER_KAPPA) -> tuple[Tensor, Tensor]:
    """The 2D + 1 sigma points of a Gaussian and their weights (see the module notes).

    Args:
        q: a Gaussian with event ``[D]``: `vitorch.DiagNormal`, `vitorch.FullRankNormal`,
            `vitorch.LowRankNormal` (its Cholesky factor is used, so 2D + 1 points), or
            torch's ``MultivariateNormal``, ``LowRankMultivariateNormal``,
            ``Independent(Normal, 1)``.
        kappa: the spread, ``> -D``; the points sit ``sqrt(D + kappa)`` standard
            deviations out along each column of the covariance's root.

    Returns:
        ``z [2D + 1, *batch, D]`` (centre first, then the ``+`` and the ``-`` points),
        carrying gradients to q's parameters, and ``weights [2D + 1, *batch]`` summing to one.

    Raises:
        ValueError: for another family, or ``kappa <= -D``.

    References:
        Julier & Uhlmann (1997); Janjoš et al., *Unscented Autoencoder* (ICML 2023).
    """
    root = _root(q)
    if root is None:
        raise ValueError(f"sigma_points: {_family_name(q)} is not a Gaussian family with a covariance root")
    dim = q.event_shape[-1]
    kappa = float(kappa)
    if not dim + kappa > 0 or math.isinf(kappa):
        raise ValueError(f"sigma_points: kappa must be finite and > -D = {-dim}; got {kappa!r}")
    mu = q.mean
    offsets = math.sqrt(dim + kappa) * root.mT.expand(*q.batch_shape, dim, dim)  # row j: column a_j
    centre = mu.unsqueeze(-2)
    z = torch.cat([centre, centre + offsets, centre - offsets], -2).movedim(-2, 0)
    w = _weights(dim, kappa, mu)
    return z, w.reshape(-1, *([1] * len(q.batch_shape))).expand(2 * dim + 1, *q.batch_shape)


class _Unscented(WeightedRule):
    """Sigma points as weighted particles (see `unscented`)."""

    def __init__(self, kappa: float):
        kappa = float(kappa)
        if math.isnan(kappa) or math.isinf(kappa):
            raise ValueError(f"unscented: kappa must be finite; got {kappa!r}")
        self.kappa = kappa
        self.name = "unscented()" if kappa == PAPER_KAPPA else f"unscented(kappa={kappa:g})"

    def rule_reasons(self, objective, q):
        if _root(q) is None:
            return [
                f"{self.name} places sigma points of a Gaussian; {_family_name(q)} is not one "
                "(DiagNormal, FullRankNormal, LowRankNormal, torch MultivariateNormal)"
            ]
        out = []
        dim = q.event_shape[-1]
        if not dim + self.kappa > 0:
            out.append(f"{self.name}: kappa must exceed -D = {-dim}")
        if not (objective.model.particlewise and objective.guide.particlewise):
            out.append(
                f"{self.name} integrates quadratics exactly, so it serves a mean of log-weights (the ELBO); "
                f"{objective.name} is a log-space mean whose integrand w^t is never quadratic in z, and its "
                "guide gradient would follow the rule's error rather than a bound: use elbo"
            )
        return out

    def particle_count(self, q, num_particles):
        return 2 * q.event_shape[-1] + 1

    def draw(self, q, num_particles, objective):
        z, weights = sigma_points(q, self.kappa)
        return Particles(z, z, q.log_prob(z), None, weights)


def unscented(kappa: float = PAPER_KAPPA) -> Estimator:
    """The unscented estimator: 2D + 1 weighted sigma points replace random draws.

    The weighted ELBO ``sum_k pi_k log w(z_k)`` is a deterministic function of the
    guide's and model's parameters, so its gradient has zero variance; the sigma
    points carry q's parameters, so the gradient is pathwise.  Exact when the
    log-joint is quadratic in z (linear-Gaussian decoder).

    Args:
        kappa: the sigma points' spread (module notes); ``1e-3`` as in the Unscented
            Autoencoder.

    Returns:
        An estimator for `vitorch.loss` (leave ``num_particles`` at 1); the log-joint
        receives ``z [2D + 1, *batch, D]``.

    Example:
        >>> q = vt.DiagNormal(loc, scale)                       # batch [B], event [D]
        >>> out = vt.loss(log_joint, q, estimator=vt.estimators.unscented())

    References:
        Julier & Uhlmann (1997); Janjoš, Rosenbaum, Dolgov & Zöllner, *Unscented
        Autoencoder* (ICML 2023).
    """
    return _Unscented(kappa)


def expect(f: Callable[[Tensor], Tensor], q: Distribution, kappa: float = PAPER_KAPPA) -> Tensor:
    """The unscented estimate ``sum_k pi_k f(z_k)`` of ``E_q[f(z)]``, ``[*batch]``.

    Exact for ``f`` quadratic in z; differentiable in ``f``'s and q's parameters.  The
    Unscented Autoencoder's reconstruction term is ``expect`` of the decoder's
    log-likelihood (pair it with `vitorch.families.wasserstein.squared_wasserstein2`).

    Args:
        f: maps ``z [2D + 1, *batch, D]`` to ``[2D + 1, *batch]``.
        q: a Gaussian family (see `sigma_points`).
        kappa: the sigma points' spread.

    Raises:
        ValueError: for a non-Gaussian ``q``, a bad ``kappa`` or an ``f`` of the wrong shape.

    References:
        Julier & Uhlmann (1997); Janjoš et al., *Unscented Autoencoder* (ICML 2023).
    """
    z, weights = sigma_points(q, kappa)
    values = f(z)
    if not isinstance(values, Tensor) or values.shape != weights.shape:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"expect: f must map z {tuple(z.shape)} to shape {tuple(weights.shape)}; got {got}")
    return (weights * values).sum(0)
