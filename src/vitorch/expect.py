"""``vitorch.expect``: a Monte Carlo expectation under a family, with an estimator's gradient.

Not every quantity a model needs is a bound: a GP's expected log-likelihood under
``q(f)``, a predictive mean, a control variate.  ``expect`` draws K particles and
returns the sample mean of ``f``; its gradient with respect to ``f``'s and ``q``'s
parameters is the chosen estimator's (pathwise for ``reparam``, the score function for
``score()``), by the same surrogate construction as `vitorch.loss`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from .estimators import _ScoreBase, reparam
from .loss import _as_count, _checked

__all__ = ["expect"]


def expect(f: Callable[[Tensor], Tensor], q: Distribution, num_particles: int = 1, estimator=reparam) -> Tensor:
    """Monte Carlo estimate of ``E_q[f(z)]``, ``[*batch]``, with the estimator's gradient.

    Args:
        f: maps particles ``z [K, *batch, *event]`` to values ``[K, *batch]``.
        q: a distribution with batch shape ``[*batch]``.
        num_particles: K.
        estimator: ``vt.estimators.reparam`` (pathwise: needs ``rsample``) or
            ``vt.estimators.score()`` (score function, no baseline; needs ``log_prob``).

    Returns:
        ``(1/K) sum_k f(z_k)``; its gradient is the estimator's estimate of ``grad E_q[f]``.

    Raises:
        ValueError: on a bad K, an estimator that does not estimate expectations
            (STL, DReG and VIMCO are bound estimators), a family without ``rsample``
            for ``reparam``, or an ``f`` that returns the wrong shape.

    References:
        Mohamed, Rosca, Figurnov & Mnih, *Monte Carlo Gradient Estimation in Machine
        Learning* (JMLR 2020): the pathwise and score-function estimators.
    """
    K = _as_count(num_particles)
    if K is None:
        raise ValueError(f"expect: num_particles must be an integer >= 1; got {num_particles!r}")
    if not isinstance(q, Distribution):
        raise ValueError(f"expect: q must be a torch Distribution (a vitorch family); got {type(q).__name__}")
    pathwise = type(estimator) is type(reparam)
    if not pathwise and not (isinstance(estimator, _ScoreBase) and getattr(estimator, "baseline", 0) is None):
        raise ValueError(f"expect: estimator must be reparam or score() without a baseline; got {estimator!r}")
    if pathwise:
        if not getattr(q, "has_rsample", False) or getattr(q, "has_correction", False):
            raise ValueError(f"expect: reparam needs an exact rsample, which {type(q).__name__} lacks; use score()")
        z = q.rsample((K,))
        return _checked(f(z), z, K, q.batch_shape).mean(0)
    with torch.no_grad():
        z = q.sample((K,))
    values = _checked(f(z), z, K, q.batch_shape)
    log_q = q.log_prob(z)
    # Value: the sample mean (the second term is zero in value).  Gradient: the mean of
    # grad f + f grad log q, unbiased at every K; no baseline, which at K = 1 would have
    # to come from outside the draw to stay unbiased.
    score_term = (values.detach() * (log_q - log_q.detach())).mean(0)
    return values.mean(0) + score_term
