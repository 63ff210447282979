"""The importance-weighted bounds: ELBO, IWAE, and their mixtures MIWAE, CIWAE and PIWAE.

With ``w_k = p(x, z_k) / q(z_k | x)`` and ``log_w [K, *batch]``, the ELBO averages the
log-weights, IWAE takes the log of their average, and the three bounds of Rainforth et
al. (2018) sit between them on the same particles: ``elbo <= miwae(M) <= iwae``
(``miwae(1)`` is IWAE, ``miwae(K)`` the ELBO), ``ciwae(beta)`` is a convex combination of
the two, and ``piwae(M)`` trains the model on IWAE and the guide on MIWAE.  Each maps
``log_w`` to ``[*batch]`` and states the closed forms of its gradient weights
(``grad_coefficients``, ``dreg_coefficients``) that the estimators would otherwise derive.

The public names are re-exported by `vitorch.objectives`, which documents them.

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, *Tighter Variational Bounds are
    Not Necessarily Better* (ICML 2018).
    Tucker, Lawson, Gu & Maddison, *Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives* (ICLR 2019).
"""

from __future__ import annotations

from torch import Tensor

from . import _logspace as ls
from ._objectives_base import Objective, Split, weighted_mean, weighted_power

__all__ = ["elbo", "iwae", "miwae", "ciwae", "piwae"]


class _ELBO(Objective):
    """Evidence lower bound ``(1/K) sum_k log w_k`` (Kingma & Welling, 2014).

    Maps ``log_w [K, *batch]`` to ``[*batch]``.  The K particles are independent ELBO
    estimates, so the score-function signal of particle k is its own log-weight.
    """

    name = "elbo"
    particlewise = True
    takes_weights = True

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        return ls.mean(log_w, 0) if weights is None else weighted_mean(log_w, weights)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.in_range(log_w).to(log_w.dtype) / log_w.shape[0]

    def learning_signal(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        """Per particle ``(log w_k - b) / K``: each particle is its own ELBO estimate."""
        return ls.masked(log_w - baseline, ls.in_range(log_w)) / log_w.shape[0]


class _IWAE(Objective):
    """Importance-weighted bound ``log (1/K) sum_k w_k`` (Burda et al., 2016).

    Maps ``log_w [K, *batch]`` to ``[*batch]``; tighter than the ELBO on the same
    particles and increasing to ``log p(x)`` as K grows.
    """

    name = "iwae"
    takes_weights = True

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        return ls.logmeanexp(log_w, 0) if weights is None else weighted_power(log_w, weights, 1.0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(log_w, 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        # Tucker et al. (2019), eq. 8: w~ - dw~/dlog w = w~^2.
        return ls.softmax(log_w, 0).pow(2)


elbo = _ELBO()
iwae = _IWAE()


class _MIWAE(Objective):
    """``MIWAE(M, K/M)``: the mean of M independent IWAE bounds of K/M particles each.

    Rainforth et al. (2018), *Tighter Variational Bounds are Not Necessarily Better*.
    Particles ``k`` with the same ``k // (K/M)`` form a group.
    """

    def __init__(self, num_groups: int):
        if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"miwae: M (num_groups) must be a positive integer; got {num_groups!r}")
        self.num_groups = num_groups
        self.name = f"miwae(M={num_groups})"

    def reasons(self, num_particles: int) -> list[str]:
        if num_particles % self.num_groups:
            return [f"{self.name}: M={self.num_groups} does not divide K={num_particles}"]
        return []

    def weighted_reasons(self) -> list[str]:
        return [
            f"{self.name} averages M independent groups of K/M draws, and the particles of one "
            "deterministic rule (enumeration, sigma points) form no independent groups; use elbo or iwae"
        ]

    def _groups(self, log_w: Tensor) -> Tensor:
        return log_w.reshape(self.num_groups, log_w.shape[0] // self.num_groups, *log_w.shape[1:])

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.logmeanexp(self._groups(log_w), 1).mean(0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self._groups(log_w), 1).reshape(log_w.shape) / self.num_groups

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self._groups(log_w), 1).pow(2).reshape(log_w.shape) / self.num_groups


def miwae(M: int) -> Objective:
    """Multiply importance weighted bound with ``M`` groups (``M`` must divide K).

    Maps ``log_w [K, *batch]`` to ``[*batch]``: the mean over ``M`` groups of K/M
    consecutive particles of each group's IWAE bound.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, *Tighter Variational
        Bounds are Not Necessarily Better* (ICML 2018).
    """
    return _MIWAE(M)


class _CIWAE(Objective):
    """``beta * ELBO + (1 - beta) * IWAE_K`` on the same particles (Rainforth et al., 2018)."""

    takes_weights = True

    def __init__(self, beta: float):
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"ciwae: beta must lie in [0, 1]; got {beta!r}")
        self.beta = float(beta)
        self.name = f"ciwae(beta={self.beta:g})"

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        return self.beta * elbo.bound(log_w, weights) + (1 - self.beta) * iwae.bound(log_w, weights)


def ciwae(beta: float) -> Objective:
    """Combination importance weighted bound, ``beta`` in ``[0, 1]`` (1 is the ELBO, 0 IWAE).

    Maps ``log_w [K, *batch]`` to ``beta * ELBO + (1 - beta) * IWAE``, ``[*batch]``
    (Rainforth et al., 2018).
    """
    return _CIWAE(beta)


def piwae(M: int) -> Objective:
    """Partially importance weighted: model on ``IWAE_K``, guide on ``MIWAE(M, K/M)``.

    Rainforth et al. (2018).  Both use the same ``K`` draws; with the ``dreg``
    estimator the guide takes MIWAE's doubly-reparameterized gradient.
    """
    return Split(iwae, _MIWAE(M), f"piwae(M={M})")
