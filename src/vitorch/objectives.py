"""Variational objectives: pure functions of the log-weights.

With ``w_k = p(x, z_k) / q(z_k | x)`` for particles ``z_k ~ q`` and
``log_w [K, *batch]`` (particles first), each objective maps ``log_w`` to a bound
estimate ``[*batch]``.  Objectives never sample and never call ``backward``; an
estimator (:mod:`vitorch.estimators`) decides how gradients flow.  Besides its
value, an objective exposes what estimators need:

* ``grad_coefficients(log_w)``: ``dO / d log_w_k`` (detached), the weight of each
  particle in the pathwise gradient;
* ``dreg_coefficients(log_w)``: the doubly-reparameterized guide weights
  (Tucker et al., 2019), for the objectives that have them;
* ``score_coefficients(log_w, baseline)``: the weight of ``grad log q(z_k)`` in a
  score-function estimate of the gradient (with a baseline subtracted).

Lower bounds are ascended; upper bounds (``upper=True``, e.g. CUBO) are descended.
A split objective (:func:`piwae`, :func:`vis`) gives the model's parameters the
gradient of one bound and the guide's the gradient of another.

All bounds satisfy, on the same particles, ``elbo <= iwae`` and they are equal
at ``K = 1``; ``miwae(M)`` runs from ``iwae`` (M = 1) to ``elbo`` (M = K).

Infinite log-weights are replaced by ``-+1e30`` inside every bound: a particle of zero
weight (``log w = -inf``) contributes nothing and receives a zero gradient, and a
datum whose particles all have zero weight gets the finite bound ``-1e30`` rather
than ``-inf`` (and a zero gradient), so it cannot turn a batch loss into inf or NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _logspace as ls
from .mmd import mmd

__all__ = [
    "Objective",
    "Split",
    "elbo",
    "iwae",
    "miwae",
    "ciwae",
    "renyi",
    "cubo",
    "piwae",
    "vis",
    "mmd",
]


def _grad_of(fn, log_w: Tensor) -> Tensor:
    with torch.enable_grad():
        x = log_w.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


class Objective:
    """A bound ``log_w [K, *batch] -> [*batch]`` and the coefficients its estimators use.

    Attributes:
        name: short name, used in error messages.
        upper: ``True`` for an upper bound on ``log p(x)`` (minimized).
        has_dreg: whether :meth:`dreg_coefficients` is defined.

    References:
        Blei, Kucukelbir & McAuliffe, *Variational Inference: A Review for
        Statisticians* (JASA 2017); Burda, Grosse & Salakhutdinov, *Importance
        Weighted Autoencoders* (ICLR 2016).
    """

    name = "objective"
    upper = False
    has_dreg = False

    @property
    def sign(self) -> float:
        """``+1`` if the bound is ascended, ``-1`` if it is descended."""
        return -1.0 if self.upper else 1.0

    @property
    def model(self) -> Objective:
        """The objective whose gradient the model's parameters follow."""
        return self

    @property
    def guide(self) -> Objective:
        """The objective whose gradient the guide's parameters follow."""
        return self

    def __call__(self, log_w: Tensor) -> Tensor:
        raise NotImplementedError

    def reasons(self, num_particles: int) -> list[str]:
        """Why this objective cannot run with ``num_particles``; empty if it can."""
        return []

    def unguarded(self, log_w: Tensor) -> Tensor | None:
        """The bound without the replacement of infinite log-weights, or ``None``.

        Where it is defined, a *finite* result equals ``self(log_w)`` in value and
        gradient, so a caller that checks finiteness anyway (:func:`vitorch.loss`
        checks its scalar loss) may skip the guard's cost.
        """
        return None

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        """``dO / d log_w`` as a detached ``[K, *batch]`` tensor."""
        return _grad_of(self, log_w)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        """Guide weights of the doubly-reparameterized gradient (Tucker et al., 2019)."""
        raise ValueError(f"{self.name} has no DReG formula")

    def dreg_ratio(self, log_w: Tensor, grad_coefficients: Tensor) -> Tensor:
        """``dreg_coefficients / grad_coefficients`` per particle, 0 where the latter is 0.

        What DReG's backward hook rescales the guide's gradient by when model and
        guide follow this one objective; ``grad_coefficients`` is passed in because
        the caller has it, and some bounds give the ratio without a division.
        """
        return ls.weight_ratio(self.dreg_coefficients(log_w), grad_coefficients)

    def learning_signal(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        """``[K, *batch]`` ascent signal ``L_k`` whose product with the score of particle k's
        density gives the score part of ``grad E[O]``: ``sign * (O - b)`` for a bound that
        couples its particles.  A datum whose bound sits at the floor -1e30 (every
        weight zero) gets a zero signal."""
        value = self(log_w).unsqueeze(0).expand_as(log_w)
        return self.sign * torch.where(ls.finite_bound(value), value - baseline, 0.0)

    def score_coefficients(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        """Ascent weights ``a_k`` of ``grad log q(z_k)`` in a score-function gradient.

        The gradient of ``E[O(log w_1..K)]`` with respect to q's parameters, with the
        particles held fixed, is ``E[sum_k (O - b - dO/dlog w_k) grad log q(z_k)]``
        for any baseline ``b`` that does not depend on the particles; the weights are
        multiplied by :attr:`sign` so that ascending ``sum_k a_k log q(z_k)`` follows it.
        """
        return self.learning_signal(log_w, baseline) - self.sign * self.grad_coefficients(log_w)

    def baseline_target(self, log_w: Tensor) -> Tensor:
        """What a baseline for this objective's learning signal should predict, ``[*batch]``."""
        return self(log_w)

    def __repr__(self) -> str:
        return self.name


class _ELBO(Objective):
    """Evidence lower bound ``(1/K) sum_k log w_k`` (Kingma & Welling, 2014).

    Maps ``log_w [K, *batch]`` to ``[*batch]``.

    The K particles are independent ELBO estimates, so the score-function signal
    of particle k is its own log-weight: ``a_k = (log w_k - b - 1) / K``.
    """

    name = "elbo"
    has_dreg = True

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.mean(log_w, 0)

    def unguarded(self, log_w: Tensor) -> Tensor:
        # A finite mean has only finite terms, where the guard is the identity.
        return log_w.mean(0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.in_range(log_w).to(log_w.dtype) / log_w.shape[0]

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        # The ELBO's score term has zero mean for each particle, so DReG is STL here.
        return self.grad_coefficients(log_w)

    def learning_signal(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        return torch.where(torch.isfinite(log_w), log_w - baseline, 0.0) / log_w.shape[0]


class _IWAE(Objective):
    """Importance-weighted bound ``log (1/K) sum_k w_k`` (Burda et al., 2016).

    Maps ``log_w [K, *batch]`` to ``[*batch]``; tighter than the ELBO on the same
    particles and increasing to ``log p(x)`` as K grows.

    DReG guide weights are ``w~_k^2`` with ``w~ = softmax(log_w)`` (Tucker et al., 2019).
    """

    name = "iwae"
    has_dreg = True

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.logmeanexp(log_w, 0)

    def unguarded(self, log_w: Tensor) -> Tensor:
        # A finite log-sum-exp has no +inf term and a finite one beside every -inf
        # term, which then weighs exp(-inf) = 0 forward and backward, as guarded.
        return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(log_w.detach(), 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(log_w.detach(), 0).pow(2)

    def dreg_ratio(self, log_w: Tensor, grad_coefficients: Tensor) -> Tensor:
        # w~^2 / w~ = w~ (and 0 where w~ = 0): the normalized weights themselves.
        return grad_coefficients


elbo = _ELBO()
iwae = _IWAE()


class _MIWAE(Objective):
    """``MIWAE(M, K/M)``: the mean of M independent IWAE bounds of K/M particles each.

    Rainforth et al. (2018), *Tighter Variational Bounds are Not Necessarily Better*.
    Particles ``k`` with the same ``k // (K/M)`` form a group.
    """

    has_dreg = True

    def __init__(self, num_groups: int):
        if not isinstance(num_groups, int) or num_groups < 1:
            raise ValueError(f"miwae: M (num_groups) must be a positive integer; got {num_groups!r}")
        self.num_groups = num_groups
        self.name = f"miwae(M={num_groups})"

    def reasons(self, num_particles: int) -> list[str]:
        if num_particles % self.num_groups:
            return [f"{self.name}: M={self.num_groups} does not divide K={num_particles}"]
        return []

    def _groups(self, log_w: Tensor) -> Tensor:
        return log_w.reshape(self.num_groups, log_w.shape[0] // self.num_groups, *log_w.shape[1:])

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.logmeanexp(self._groups(log_w), 1).mean(0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self._groups(log_w.detach()), 1).reshape(log_w.shape) / self.num_groups

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self._groups(log_w.detach()), 1).pow(2).reshape(log_w.shape) / self.num_groups


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

    has_dreg = True

    def __init__(self, beta: float):
        if not 0.0 <= float(beta) <= 1.0:
            raise ValueError(f"ciwae: beta must lie in [0, 1]; got {beta!r}")
        self.beta = float(beta)
        self.name = f"ciwae(beta={self.beta:g})"

    def __call__(self, log_w: Tensor) -> Tensor:
        return self.beta * elbo(log_w) + (1 - self.beta) * iwae(log_w)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return self.beta * elbo.grad_coefficients(log_w) + (1 - self.beta) * iwae.grad_coefficients(log_w)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        return self.beta * elbo.grad_coefficients(log_w) + (1 - self.beta) * iwae.dreg_coefficients(log_w)


def ciwae(beta: float) -> Objective:
    """Combination importance weighted bound, ``beta`` in ``[0, 1]`` (1 is the ELBO, 0 IWAE).

    Maps ``log_w [K, *batch]`` to ``beta * ELBO + (1 - beta) * IWAE``, ``[*batch]``
    (Rainforth et al., 2018).
    """
    return _CIWAE(beta)


class _Power(Objective):
    """``(1 / t) log (1/K) sum_k w_k^t``, the Monte Carlo Rényi bound with ``t = 1 - alpha``."""

    def __init__(self, t: float, name: str, upper: bool):
        self.t, self.name, self.upper = float(t), name, upper

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.logmeanexp(self.t * log_w, 0) / self.t

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self.t * log_w.detach(), 0)


def renyi(alpha: float) -> Objective:
    """Variational Rényi bound ``1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)``, ``alpha >= 0``.

    Maps ``log_w [K, *batch]`` to ``[*batch]``.
    Li & Turner (2016), *Rényi Divergence Variational Inference*.  ``alpha = 0`` is
    IWAE and ``alpha -> 1`` the ELBO (returned exactly for ``alpha == 1``).  For
    ``alpha < 0`` the bound lies above ``log p(x)``; use :func:`cubo` for that regime.
    """
    alpha = float(alpha)
    if not alpha >= 0 or math.isinf(alpha):
        raise ValueError(f"renyi: alpha must be finite and >= 0 (a lower bound); got {alpha!r}; for alpha < 0 use cubo")
    if alpha == 1.0:
        return elbo
    return _Power(1.0 - alpha, f"renyi(alpha={alpha:g})", upper=False)


def cubo(n: float = 2.0) -> Objective:
    """χ upper bound ``CUBO_n = (1/n) log (1/K) sum_k w_k^n >= log p(x)`` in expectation as K grows.

    Maps ``log_w [K, *batch]`` to ``[*batch]``.
    Dieng, Tran, Ranganath, Paisley & Blei (2017), *Variational Inference via χ Upper
    Bound Minimization*.  It is descended; ``n > 1``.
    """
    n = float(n)
    if not n > 1 or math.isinf(n):
        raise ValueError(f"cubo: n must be finite and > 1; got {n!r}")
    return _Power(n, f"cubo(n={n:g})", upper=True)


class _ForwardChi2(_Power):
    """``log (1/S) sum_s w_s^2``, the forward-χ² objective the VIS guide descends.

    Under the score-function estimator the guide follows the self-normalized
    gradient of ``log E_q[w^2]``, namely ``-sum_s w^_s grad log q(z_s)`` with
    ``w^ = softmax(2 log w)`` (Li et al., 2024), which needs no baseline.
    """

    def __init__(self):
        super().__init__(2.0, "forward_chi2", upper=True)

    def __call__(self, log_w: Tensor) -> Tensor:
        return ls.logmeanexp(2.0 * log_w, 0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return 2.0 * ls.softmax(2.0 * log_w.detach(), 0)

    def score_coefficients(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        return ls.softmax(2.0 * log_w.detach(), 0)


class Split(Objective):
    """The model's parameters ascend ``model``; the guide's follow ``guide``.

    The reported bound and the loss value are the model objective's: ``log_w
    [K, *batch] -> [*batch]``.  Both objectives see the same K particles.

    References:
        Rainforth et al., *Tighter Variational Bounds are Not Necessarily Better*
        (ICML 2018), for PIWAE; Li et al. (2024), for VIS's forward-χ² guide.
    """

    def __init__(self, model: Objective, guide: Objective, name: str):
        self._model, self._guide, self.name = model, guide, name
        self.upper = model.upper
        self.has_dreg = guide.has_dreg

    @property
    def model(self) -> Objective:
        return self._model

    @property
    def guide(self) -> Objective:
        return self._guide

    def __call__(self, log_w: Tensor) -> Tensor:
        return self._model(log_w)

    def reasons(self, num_particles: int) -> list[str]:
        return self._model.reasons(num_particles) + self._guide.reasons(num_particles)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return self._model.grad_coefficients(log_w)


def piwae(M: int) -> Objective:
    """Partially importance weighted: model on ``IWAE_K``, guide on ``MIWAE(M, K/M)``.

    Rainforth et al. (2018).  Both use the same ``K`` draws; with the ``dreg``
    estimator the guide takes MIWAE's doubly-reparameterized gradient.
    """
    return Split(iwae, _MIWAE(M), f"piwae(M={M})")


def vis() -> Objective:
    """Variational importance sampling with the forward χ² divergence (Li et al., 2024, ICLR).

    Maps ``log_w [K, *batch]`` to the model's bound ``[*batch]``.

    The model ascends the importance-sampled ``log (1/S) sum_s w_s`` (IWAE); the guide
    descends ``log (1/S) sum_s w_s^2``, which is mass-covering.  Use it with
    ``reparam`` or with ``score()`` (the paper's self-normalized guide gradient,
    robust from a narrow initial guide).
    """
    return Split(iwae, _ForwardChi2(), "vis")
