"""``vitorch.loss``: a log-joint, a family, an objective and an estimator become one scalar.

The returned loss has the *value* of the (negated) bound and the *gradient* of the
estimator, joined by the identity ``a.detach() + (b - b.detach())``: printing the
loss prints the bound, and ``backward`` follows the estimator (TFP, BlackJAX).
No backward is called here; the caller owns the optimization step.
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution

from ._output import LossOutput
from .estimators import Estimator, reparam
from .objectives import Objective, as_objective, elbo

__all__ = ["loss", "check", "LossOutput"]


def loss(
    log_joint: Callable[[Tensor], Tensor],
    q: Distribution,
    num_particles: int = 1,
    objective: Objective | Callable[[Tensor], Tensor] = elbo,
    estimator: Estimator = reparam,
    *,
    context: Tensor | None = None,
) -> LossOutput:
    """Monte Carlo variational loss with the estimator's gradient.

    Args:
        log_joint: maps particles ``z [K, *batch, *event]`` to ``log p(x, z)`` of
            shape ``[K, *batch]``; it closes over the data and the model's parameters.
        q: the guide, a distribution with batch shape ``[*batch]``.
        num_particles: K, the number of particles per datum.  A deterministic rule
            (``enumerate()``, ``unscented()``) fixes its own particles and takes the
            default 1.
        objective: a `vitorch.objectives` bound (``elbo``, ``iwae``, ``miwae(M)``...)
            or any callable ``log_w [K, *batch] -> [*batch]`` (a lower bound).
        estimator: a `vitorch.estimators` estimator (``reparam``, ``dreg``...).
        context: what an input-dependent baseline reads (``score(LearnedBaseline(net))``).

    Returns:
        `LossOutput`; ``out.loss.backward()`` populates the gradients.

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
    num_particles = check(q, num_particles, objective, estimator)
    objective = as_objective(objective)
    particles = estimator.draw(q, num_particles, objective)
    log_p = _checked(log_joint(particles.read), particles.z, num_particles, q.batch_shape)
    log_w = log_p - particles.log_q
    bound = objective.bound(log_w, particles.weights)
    surrogate = estimator.surrogate(objective, particles, log_p, log_w, bound, context)
    value = -objective.sign * bound.mean()
    if surrogate is not None:  # the estimator's gradient, carried with a value of zero
        ascent = surrogate.mean()
        value = value.detach() - (ascent - ascent.detach())
    return LossOutput(value, bound, log_w, particles.z, particles.weights)


def check(q: Distribution, num_particles, objective, estimator: Estimator) -> int:
    """Raise ``ValueError`` listing every reason the combination cannot run; return K as an ``int``.

    K is the number of particles the estimator will draw: ``num_particles`` for random
    draws, a deterministic rule's own count (enumeration: the support's size).

    Called by `loss` before any sampling; call it yourself to fail at set-up.
    ``q`` has batch shape ``[*batch]``; the particles would be ``[K, *batch, *event]``.
    ``num_particles`` may be any integer, including numpy's and a 0-d integer tensor.
    Which pairs are valid follows the estimators' papers: STL only for the ELBO
    (Roeder et al., 2017), VIMCO for K >= 2 (Mnih & Rezende, 2016).
    """
    reasons = []
    try:
        objective = as_objective(objective)
    except TypeError as err:
        reasons.append(str(err))
        objective = None
    if not isinstance(estimator, Estimator):
        reasons.append(f"estimator must be a vitorch estimator; got {estimator!r}" + _factory_hint(estimator))
    if not isinstance(q, Distribution):
        reasons.append(f"q must be a torch Distribution (a vitorch family); got {type(q).__name__}")
    elif 0 in q.batch_shape:
        reasons.append(f"q has an empty batch {tuple(q.batch_shape)}: there is no datum to bound")
    K = _as_count(num_particles)
    if K is None:
        reasons.append(f"num_particles (K) must be an integer >= 1; got {num_particles!r}")
    elif objective is not None:
        reasons += objective.reasons(K)
        if isinstance(estimator, Estimator) and isinstance(q, Distribution):
            reasons += estimator.reasons(objective, q, K)
    if reasons:
        raise ValueError("invalid variational set-up:\n  - " + "\n  - ".join(reasons))
    return estimator.particle_count(q, K)


def _as_count(k) -> int | None:
    """``k`` as a positive Python int (any integer type, a 0-d integer tensor), else ``None``."""
    if isinstance(k, bool) or (isinstance(k, Tensor) and (k.dim() != 0 or k.is_floating_point())):
        return None
    try:
        k = operator.index(k)
    except TypeError:
        return None
    return k if k >= 1 else None


def _factory_hint(x) -> str:
    if isinstance(x, (Objective, Estimator)) or not callable(x) or not hasattr(x, "__name__"):
        return ""
    return f" ({x.__name__} is a factory; call it (e.g. {x.__name__}()) to get an instance)"


def _checked(log_p: Tensor, z: Tensor, num_particles: int, batch_shape: torch.Size) -> Tensor:
    """``log_p``, after checking it is ``[K, *batch]`` and never ``+inf``.

    A log-joint of ``+inf`` is always a bug in the model (a density that is infinite
    at a point, such as a scale of zero): the log-space reductions would clamp it to
    ``1e30`` and train on a finite loss of about ``-1e30``, so it raises here, naming
    the datum.
    """
    expected = torch.Size([num_particles]) + batch_shape
    if not isinstance(log_p, Tensor) or log_p.shape != expected:
        got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
        raise ValueError(
            f"log_joint must map z {tuple(z.shape)} to log-densities of shape {tuple(expected)} "
            f"([K, *batch]); got {got}"
        )
    # Reading the flag is a host sync, which inside torch.compile (compile_step traces with
    # fullgraph=True) would be a graph break, i.e. an error.  A compiled step turns +inf into NaN
    # instead, which the bound and the loss carry to fit's non-finite guard.
    if torch.compiler.is_compiling():
        return torch.where(torch.isposinf(log_p), torch.nan, log_p)
    posinf = torch.isposinf(log_p.detach())
    if bool(posinf.any()):
        k, *datum = (int(i) for i in posinf.nonzero()[0])
        where = f"datum {tuple(datum) if len(datum) != 1 else datum[0]}" if datum else "the datum"
        raise ValueError(
            f"log_joint returned +inf for {where} (particle {k} of {num_particles}; "
            f"{int(posinf.any(0).sum())} datum(s) in all): a log-density of +inf is a bug in the model, "
            "e.g. a likelihood with a zero scale or a density evaluated at a pole"
        )
    return log_p
