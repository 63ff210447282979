"""``vitorch.loss``: a log-joint, a family, an objective and an estimator become one scalar.

The returned loss has the *value* of the (negated) bound and the *gradient* of the
estimator, joined by the identity ``a.detach() + (b - b.detach())``: printing the
loss prints the bound, and ``backward`` follows the estimator (TFP, BlackJAX).
No backward is called here; the caller owns the optimization step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from . import _logspace as ls
from .estimators import Estimator, _check_log_p, _rsample_and_log_prob, reparam
from .objectives import Objective, elbo

__all__ = ["loss", "check", "LossOutput"]


class LossOutput:
    """What :func:`loss` returns.

    Attributes:
        loss: scalar surrogate to minimize.  Its value is ``-mean(bound)`` for a lower
            bound and ``+mean(bound)`` for an upper bound (so minimizing tightens it);
            its gradient is the estimator's.
        bound: ``[*batch]`` the bound estimate per datum (detached).  For a split
            objective, the model's bound.
        log_w: ``[K, *batch]`` detached log-weights (for diagnostics such as ESS).
        z: ``[K, *batch, *event]`` the particles, still attached to the guide where the
            estimator is pathwise (InfoVAE's MMD term uses them).

    ``bound`` and ``log_w`` are detached when read, not when built: a training step
    that never reads them pays nothing for them.

    References:
        The value/gradient split ``a.detach() + (b - b.detach())`` is the surrogate-loss
        construction of Schulman, Heess, Weber & Abbeel, *Gradient Estimation Using
        Stochastic Computation Graphs* (NeurIPS 2015).
    """

    __slots__ = ("loss", "_bound", "_log_w", "z", "_neg_log_w", "_objective")

    def __init__(self, loss: Tensor, bound: Tensor, log_w: Tensor, z: Tensor):
        self.loss, self._bound, self._log_w, self.z = loss, bound, log_w, z

    @classmethod
    def _from_negated(cls, loss: Tensor, neg_log_w: Tensor, z: Tensor, objective: Objective) -> LossOutput:
        """An output whose loss was computed from finite (or guarded) ``-log_w``:
        ``log_w`` and the bound are derived when first read (the unguarded formula,
        exact for finite log-weights), so a step that never reads them pays nothing."""
        out = cls(loss, None, None, z)
        out._neg_log_w, out._objective = neg_log_w, objective
        return out

    @property
    def bound(self) -> Tensor:
        if self._bound is None:
            self._bound = self._objective.unguarded(self.log_w)
        return self._bound.detach()

    @property
    def log_w(self) -> Tensor:
        if self._log_w is None:
            self._log_w = self._neg_log_w.detach().neg()
        return self._log_w.detach()

    def __repr__(self) -> str:
        return f"LossOutput(loss={self.loss!r}, bound={self.bound!r}, log_w={self.log_w!r}, z={self.z!r})"


def _factory_hint(x) -> str:
    name = getattr(x, "__name__", type(x).__name__)
    return f"{name} is a factory; call it (e.g. {name}()) to get an instance"


def check(q: Distribution, num_particles: int, objective: Objective, estimator: Estimator) -> None:
    """Raise ``ValueError`` listing every reason the combination cannot run; return ``None`` if it can.

    Called by :func:`loss` before any sampling; call it yourself to fail at set-up.
    ``q`` has batch shape ``[*batch]``; the particles would be ``[K, *batch, *event]``.
    Which pairs are valid follows the estimators' papers: STL only for the ELBO
    (Roeder et al., 2017), DReG where Tucker et al. (2019) give its weights, VIMCO for
    K >= 2 (Mnih & Rezende, 2016).
    """
    reasons = []
    if not isinstance(objective, Objective):
        reasons.append(
            f"objective must be a vitorch objective; got {objective!r}"
            + (f" ({_factory_hint(objective)})" if callable(objective) else "")
        )
    if not isinstance(estimator, Estimator):
        reasons.append(
            f"estimator must be a vitorch estimator; got {estimator!r}"
            + (f" ({_factory_hint(estimator)})" if callable(estimator) else "")
        )
    if not isinstance(q, Distribution):
        reasons.append(f"q must be a torch Distribution (a vitorch family); got {type(q).__name__}")
    if isinstance(num_particles, bool) or not isinstance(num_particles, int) or num_particles < 1:
        reasons.append(f"num_particles (K) must be an integer >= 1; got {num_particles!r}")
    elif isinstance(objective, Objective):
        reasons += objective.reasons(num_particles)
        if isinstance(estimator, Estimator) and isinstance(q, Distribution):
            reasons += estimator.reasons(objective, q, num_particles)
    if reasons:
        raise ValueError("invalid variational set-up:\n  - " + "\n  - ".join(reasons))


# Set-ups that passed check(): a training loop pays for the full check once, not every step
# (inside a step it costs ~20 us, 4 % of a small model's ELBO step).  The verdict depends only
# on what the key holds: the objective and estimator (compared by identity, never mutated),
# K, and the family's has_rsample / has_correction.  Failures are never stored, so a bad
# set-up raises on every call; the size cap keeps a loop that builds a new objective per
# step (e.g. ``miwae(5)`` inline) from growing it without bound.
_PASSED: dict = {}
_PASSED_MAX = 1024


def _check_once(q: Distribution, num_particles: int, objective: Objective, estimator: Estimator) -> None:
    """:func:`check`, skipped for a set-up that already passed it."""
    if type(num_particles) is not int:  # True == 1 would share K=1's entry
        return check(q, num_particles, objective, estimator)
    key = (
        objective,
        estimator,
        num_particles,
        type(q),
        getattr(q, "has_rsample", False),
        getattr(q, "has_correction", False),
    )
    try:
        if key in _PASSED:
            return
    except TypeError:  # a user's objective or estimator without a hash: check every call
        return check(q, num_particles, objective, estimator)
    check(q, num_particles, objective, estimator)
    if len(_PASSED) < _PASSED_MAX:
        _PASSED[key] = True


def loss(
    log_joint: Callable[[Tensor], Tensor],
    q: Distribution,
    num_particles: int = 1,
    objective: Objective = elbo,
    estimator: Estimator = reparam,
    *,
    context: Tensor | None = None,
) -> LossOutput:
    """Monte Carlo variational loss with the estimator's gradient.

    Args:
        log_joint: maps particles ``z [K, *batch, *event]`` to ``log p(x, z)`` of
            shape ``[K, *batch]``; it closes over the data and the model's parameters.
        q: the guide, a distribution with batch shape ``[*batch]``.
        num_particles: K, the number of particles per datum.
        objective: a :mod:`vitorch.objectives` bound (``elbo``, ``iwae``, ``miwae(M)``...).
        estimator: a :mod:`vitorch.estimators` estimator (``reparam``, ``dreg``...).
        context: what an input-dependent baseline reads (``score(LearnedBaseline(net))``).

    Returns:
        :class:`LossOutput`; ``out.loss.backward()`` populates the gradients.

    Raises:
        ValueError: before any sampling, listing every reason the objective,
            estimator, family and K cannot work together; or if ``log_joint``
            returns the wrong shape.

    Example:
        >>> out = vt.loss(log_joint, q, num_particles=8, objective=vt.objectives.iwae,
        ...               estimator=vt.estimators.dreg)
        >>> out.loss.backward()

    References:
        Kingma & Welling (2014), Burda et al. (2016) and Tucker et al. (2019) for the
        objective/estimator pairs; Schulman et al. (2015) for the surrogate loss.
    """
    _check_once(q, num_particles, objective, estimator)
    if objective is elbo and estimator is reparam and not getattr(q, "has_correction", False):
        return _elbo_reparam(log_joint, q, num_particles)
    surrogate, log_w, z, bound = estimator.surrogate(log_joint, q, num_particles, objective, context)
    if bound is not None:
        # The surrogate is the signed bound itself: autograd through it is the estimator.
        value = -surrogate.mean()
        if ls._fast_path(value) and not math.isfinite(value.item()):
            # On eager CPU code the estimator may have skipped the guard against
            # infinite log-weights, and one was there: rebuild the bound guarded, on
            # the same particles (a no-op change if it was guarded already).
            bound = objective(log_w)
            value = -objective.sign * bound.mean()
        return LossOutput(loss=value, bound=bound, log_w=log_w, z=z)
    with torch.no_grad():
        bound = objective(log_w)
    # A datum whose bound is -inf keeps its honest value but must not turn the
    # zero-valued gradient carrier below into inf - inf = NaN.
    ascent = ls.finite_mean(surrogate)
    value = -objective.sign * bound.mean()
    return LossOutput(loss=value.detach() - (ascent - ascent.detach()), bound=bound, log_w=log_w, z=z)


def _elbo_reparam(log_joint: Callable[[Tensor], Tensor], q: Distribution, num_particles: int) -> LossOutput:
    """:func:`loss` for the ELBO with the reparameterization gradient, the most common
    use, in the fewest operations.

    ``-mean(ELBO)`` is the mean of ``log q - log p`` over particles and data: one
    subtraction and one reduction, no per-datum mean and no negation (two operations
    and two autograd nodes fewer than ``-(log_p - log_q).mean(0).mean()``, which a
    small model's step feels).  The guard against infinite log-weights (see
    :mod:`vitorch._logspace`) is skipped on eager CPU code when the loss is finite,
    which proves it a no-op; compiled code always applies it, so both compute the
    same numbers.
    """
    z, log_q = _rsample_and_log_prob(q, (num_particles,))
    log_p = log_joint(z)
    _check_log_p(log_p, z, num_particles, q.batch_shape)
    neg_log_w = log_q - log_p
    if ls._fast_path(neg_log_w):
        value = neg_log_w.mean()
        if math.isfinite(value.item()):
            return LossOutput._from_negated(value, neg_log_w, z, elbo)
    neg_log_w = ls.clamp(neg_log_w)  # the guard is symmetric: clamp(-log_w) = -clamp(log_w)
    return LossOutput._from_negated(neg_log_w.mean(), neg_log_w, z, elbo)
