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

from collections.abc import Callable

from torch import Tensor

from ._objectives_base import Objective, Split
from ._objectives_iw import ciwae, elbo, iwae, miwae, piwae
from ._objectives_power import cubo, renyi, vis
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
