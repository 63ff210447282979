"""The objective contract, split objectives, and the reductions over weighted particles.

`Objective` is what every bound of `vitorch.objectives` is: a map from log-weights
``log_w [K, *batch]`` (particles first) to a bound estimate ``[*batch]``, with the
flags the estimators read (``upper``, ``particlewise``, ``takes_baseline``,
``takes_weights``).  `Split` pairs two of them so that the model's parameters
follow one bound and the guide's the other (PIWAE, VIS).

Weighted particles.  A deterministic rule (enumeration, sigma points) gives particle k
a weight ``pi_k`` (``[K, *batch]``, summing to one over particles) in place of ``1/K``.
The two reductions here are the weighted forms every such bound is built from:
``sum_k pi_k log w_k`` (the ELBO) and ``(1/t) log sum_k pi_k w_k^t`` (IWAE at ``t = 1``,
the Rényi and χ bounds otherwise; Li & Turner, 2016).

The public names are re-exported by `vitorch.objectives`, which documents them.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import _logspace as ls

__all__ = ["Objective", "Split"]


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


# ---------------------------------------------------------------- weighted particles


def _log_weights(weights: Tensor) -> Tensor:
    """``log pi`` of particle weights: ``-inf`` (no value, no gradient) where a weight is zero.

    A negative weight gives NaN, which propagates as a bug should: the log-space bounds
    need nonnegative weights (the estimators refuse rules with negative weights for them).
    """
    tiny = torch.finfo(weights.dtype).tiny
    return torch.where(weights == 0, -math.inf, weights.clamp_min(tiny).log().where(weights > 0, math.nan))


def weighted_mean(log_w: Tensor, weights: Tensor) -> Tensor:
    """``sum_k pi_k log w_k`` over the particles of nonzero weight, ``[*batch]``.

    Infinite log-weights are clamped as in the unweighted ELBO; a particle of weight
    zero contributes nothing, however large its log-weight (enumeration reaches points
    where q is zero, whose log-weight is ``+inf``).  Half precision is reduced in float32.
    """
    x = ls.clamp(log_w)
    terms = torch.where(weights != 0, weights.to(x.dtype) * x, 0.0)
    return ls._saturate(terms.sum(0), log_w.dtype)


def weighted_power(log_w: Tensor, weights: Tensor, t: float) -> Tensor:
    """``(1/t) log sum_k pi_k w_k^t``, ``[*batch]``: the Rényi/χ family's weighted mean."""
    x = log_w.float() if log_w.dtype in ls._LOW_PRECISION else log_w
    log_pi = _log_weights(weights.to(x.dtype))
    out = torch.logsumexp(ls.clamp(log_pi + t * ls.clamp(x)), 0) / t
    return ls._saturate(out, log_w.dtype)
