"""Variational objectives: pure functions of the log-weights.

With ``w_k = p(x, z_k) / q(z_k | x)`` for particles ``z_k ~ q`` and
``log_w [K, *batch]`` (particles first), an objective maps ``log_w`` to a bound
estimate ``[*batch]``.  That value is all an objective must define: the estimators
(`vitorch.estimators`) derive the gradient weights they need from it by autograd
on the small ``[K, *batch]`` tensor, so a new objective, or any plain callable
``log_w -> bound`` passed to `vitorch.loss`, gets every estimator for free.
Besides its value an objective may state

* the reasons it refuses a particle count (`Objective.reasons`);
* ``upper = True`` for an upper bound on ``log p(x)`` (descended, e.g. CUBO);
* ``particlewise = True`` when it is the mean of one term per particle (the ELBO),
  which makes STL unbiased;
* optional closed forms of what the estimators would otherwise derive by autograd:
  ``grad_coefficients`` (``dO / d log_w``), ``dreg_coefficients`` and
  ``learning_signal``.  They must agree with the derivation (tests check it).

A split objective (`piwae`, `vis`) gives the model's parameters the
gradient of one bound and the guide's the gradient of another.

Weighted particles.  A deterministic rule (exact enumeration, unscented sigma points;
`vitorch.estimators.enumerate`, `vitorch.estimators.unscented`) gives particle k a
weight ``pi_k`` (``[K, *batch]``, summing to one over particles) in place of the
``1/K`` of K i.i.d. draws.  An objective with ``takes_weights = True`` then replaces
its plain mean over particles by the weighted one: the ELBO becomes
``sum_k pi_k log w_k``, IWAE ``log sum_k pi_k w_k``, the Rényi and χ bounds
``(1/t) log sum_k pi_k w_k^t``.  Under an exact rule these are the bounds' defining
expectations (Li & Turner's ``L_alpha``; for IWAE, K -> infinity, ``log p(x)``
itself).  MIWAE (and so PIWAE) averages independent groups of draws, which a
deterministic rule does not have, and refuses (`Objective.weighted_reasons`).

All bounds satisfy, on the same particles, ``elbo <= iwae`` and they are equal
at ``K = 1``; ``miwae(M)`` runs from ``iwae`` (M = 1) to ``elbo`` (M = K).

Infinite log-weights are replaced by ``-+1e30`` inside every bound: a particle of zero
weight (``log w = -inf``) contributes nothing and receives a zero gradient, and a
datum whose particles all have zero weight gets the finite bound ``-1e30`` rather
than ``-inf`` (and a zero gradient), so it cannot turn a batch loss into inf or NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from . import _logspace as ls
from .mmd import mmd

__all__ = [
    "Objective",
    "Split",
    "as_objective",
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


class Objective:
    """A bound ``log_w [K, *batch] -> [*batch]``.

    Attributes:
        name: short name, used in error messages.
        upper: ``True`` for an upper bound on ``log p(x)`` (minimized).
        particlewise: ``True`` if the bound is the mean of one term per particle.
        takes_baseline: ``False`` if its score-function gradient must not subtract a
            baseline (the self-normalized forward-χ² gradient).
        takes_weights: ``True`` if ``__call__(log_w, weights)`` accepts particle
            weights ``[K, *batch]`` (see the module notes).

    References:
        Blei, Kucukelbir & McAuliffe, *Variational Inference: A Review for
        Statisticians* (JASA 2017); Burda, Grosse & Salakhutdinov, *Importance
        Weighted Autoencoders* (ICLR 2016).
    """

    name = "objective"
    upper = False
    particlewise = False
    takes_baseline = True
    takes_weights = False

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
        raise NotImplementedError(f"{type(self).__name__} must define __call__(log_w)")

    def bound(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        """The bound ``[*batch]`` on K i.i.d. particles (``weights=None``) or on weighted ones.

        ``weights [K, *batch]`` are the particles' weights under a deterministic rule
        (they sum to one over dim 0); an objective that takes them says so with
        ``takes_weights``, and is called as ``self(log_w, weights)``.
        """
        return self(log_w) if weights is None else self(log_w, weights)

    def reasons(self, num_particles: int) -> list[str]:
        """Why this objective cannot run with ``num_particles``; empty if it can."""
        return []

    def weighted_reasons(self) -> list[str]:
        """Why this objective has no form for weighted particles; empty if it has."""
        if self.takes_weights:
            return []
        return [
            f"{self.name} has no form for weighted particles (it reads log_w alone); "
            "subclass vitorch.objectives.Objective with takes_weights = True and __call__(log_w, weights)"
        ]

    def __repr__(self) -> str:
        return self.name


class _Callable(Objective):
    """A user's function ``log_w [K, *batch] -> [*batch]`` as a lower bound."""

    def __init__(self, fn: Callable[[Tensor], Tensor]):
        self.fn = fn
        self.name = getattr(fn, "__name__", type(fn).__name__)

    def __call__(self, log_w: Tensor) -> Tensor:
        return self.fn(log_w)


def as_objective(objective) -> Objective:
    """``objective`` itself, or a plain callable ``log_w -> bound`` wrapped as a lower bound.

    The callable maps ``log_w [K, *batch]`` to ``[*batch]`` and must treat each datum on
    its own (the estimators differentiate it per particle).

    Raises:
        TypeError: if ``objective`` is neither an `Objective` nor callable.

    References:
        Tucker et al. (2019): the estimators need only the bound's value and derivatives.
    """
    if isinstance(objective, Objective):
        return objective
    if objective in (miwae, ciwae, renyi, cubo, piwae, vis):
        name = objective.__name__
        raise TypeError(f"objective {name} is a factory; call it (e.g. {name}(...)) to get an objective")
    if callable(objective) and not isinstance(objective, type):
        return _Callable(objective)
    hint = f" ({objective.__name__} is a class; pass an instance)" if isinstance(objective, type) else ""
    raise TypeError(f"objective must be a vitorch objective or a callable log_w -> bound; got {objective!r}{hint}")


class _ELBO(Objective):
    """Evidence lower bound ``(1/K) sum_k log w_k`` (Kingma & Welling, 2014).

    Maps ``log_w [K, *batch]`` to ``[*batch]``.  The K particles are independent ELBO
    estimates, so the score-function signal of particle k is its own log-weight.
    """

    name = "elbo"
    particlewise = True
    takes_weights = True

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        return ls.mean(log_w, 0) if weights is None else _weighted_mean(log_w, weights)

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
        return ls.logmeanexp(log_w, 0) if weights is None else _weighted_power(log_w, weights, 1.0)

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


class _Power(Objective):
    """``(1 / t) log (1/K) sum_k w_k^t``, the Monte Carlo Rényi bound with ``t = 1 - alpha``.

    Its DReG weights follow from the general rule ``c - dc/dlog w`` with
    ``c = softmax(t log w)``: ``(1 - t) c + t c^2`` (``alpha c + (1 - alpha) c^2``;
    Daudel, Benton, Shi & Doucet, *Alpha-divergence Variational Inference Meets
    Importance Weighted Auto-Encoders*, JMLR 2023).
    """

    takes_weights = True

    def __init__(self, t: float, name: str, upper: bool):
        self.t, self.name, self.upper = float(t), name, upper

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is not None:
            return _weighted_power(log_w, weights, self.t)
        return ls.power_logmeanexp(log_w, self.t)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self.t * log_w, 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        c = ls.softmax(self.t * log_w, 0)
        return (1 - self.t) * c + self.t * c.pow(2)


def renyi(alpha: float) -> Objective:
    """Variational Rényi bound ``1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)``, ``alpha >= 0``.

    Maps ``log_w [K, *batch]`` to ``[*batch]``.
    Li & Turner (2016), *Rényi Divergence Variational Inference*.  ``alpha = 0`` is
    IWAE and ``alpha -> 1`` the ELBO (returned exactly for ``alpha == 1``).  For
    ``alpha < 0`` the bound lies above ``log p(x)``; use `cubo` for that regime.
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
    ``w^ = softmax(2 log w)`` (Li et al., 2024), which takes no baseline.
    """

    takes_baseline = False

    def __init__(self):
        super().__init__(2.0, "forward_chi2", upper=True)

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is not None:
            return 2.0 * _weighted_power(log_w, weights, 2.0)
        return ls.logmeanexp(2.0 * log_w, 0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return 2.0 * ls.softmax(2.0 * log_w, 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        c = ls.softmax(2.0 * log_w, 0)
        return 2.0 * (2.0 * c.pow(2) - c)

    def score_coefficients(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        """Ascent weights of ``log q(z_s)``: the self-normalized weights ``w^_s``."""
        return ls.softmax(2.0 * log_w, 0)


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

    @property
    def model(self) -> Objective:
        return self._model

    @property
    def guide(self) -> Objective:
        return self._guide

    @property
    def takes_weights(self) -> bool:
        return self._model.takes_weights and self._guide.takes_weights

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        return self._model.bound(log_w, weights)

    def reasons(self, num_particles: int) -> list[str]:
        return self._model.reasons(num_particles) + self._guide.reasons(num_particles)

    def weighted_reasons(self) -> list[str]:
        return self._model.weighted_reasons() + self._guide.weighted_reasons()


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


# ---------------------------------------------------------------- weighted particles


def _log_weights(weights: Tensor) -> Tensor:
    """``log pi`` of particle weights: ``-inf`` (no value, no gradient) where a weight is zero.

    A negative weight gives NaN, which propagates as a bug should: the log-space bounds
    need nonnegative weights (the estimators refuse rules with negative weights for them).
    """
    tiny = torch.finfo(weights.dtype).tiny
    return torch.where(weights == 0, -math.inf, weights.clamp_min(tiny).log().where(weights > 0, math.nan))


def _weighted_mean(log_w: Tensor, weights: Tensor) -> Tensor:
    """``sum_k pi_k log w_k`` over the particles of nonzero weight, ``[*batch]``.

    Infinite log-weights are clamped as in the unweighted ELBO; a particle of weight
    zero contributes nothing, however large its log-weight (enumeration reaches points
    where q is zero, whose log-weight is ``+inf``).  Half precision is reduced in float32.
    """
    x = ls.clamp(log_w)
    terms = torch.where(weights != 0, weights.to(x.dtype) * x, 0.0)
    return ls._saturate(terms.sum(0), log_w.dtype)


def _weighted_power(log_w: Tensor, weights: Tensor, t: float) -> Tensor:
    """``(1/t) log sum_k pi_k w_k^t``, ``[*batch]``: the Rényi/χ family's weighted mean."""
    x = log_w.float() if log_w.dtype in ls._LOW_PRECISION else log_w
    log_pi = _log_weights(weights.to(x.dtype))
    out = torch.logsumexp(ls.clamp(log_pi + t * ls.clamp(x)), 0) / t
    return ls._saturate(out, log_w.dtype)
