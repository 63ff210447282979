"""Deterministic particles with weights, and exact enumeration of a finite support.

A Monte Carlo estimator draws K particles of weight ``1/K`` each.  A *rule* instead
places particles ``z_k`` deterministically and gives each a weight ``pi_k``
(``[K, *batch]``, summing to one over particles), so that
``sum_k pi_k f(z_k)`` is ``E_q[f]`` exactly (enumeration) or exactly for a class of
``f`` (sigma points: every quadratic).  The objective then takes the weights in place
of ``1/K`` (`vitorch.objectives`, "Weighted particles"): the ELBO is
``sum_k pi_k log w_k``.  There is nothing random left, so the gradient of that weighted
bound *is* the estimator: no surrogate, zero variance.

`enumerate` places one particle on every point of a small finite support with weight
``q(z)``: the ELBO (and the weighted IWAE ``log sum_z q(z) w(z) = log p(x)``) and their
gradients for the model's and the guide's parameters are then exact.

References:
    Mnih & Gregor, *Neural Variational Inference and Learning in Belief Networks*
    (ICML 2014) and Kingma, Rezende, Mohamed & Welling, *Semi-Supervised Learning
    with Deep Generative Models* (NeurIPS 2014): summing a discrete latent's
    expectation over its support instead of sampling it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Distribution, Independent, OneHotCategorical

from ._particles import Estimator, Particles, _family_name
from .objectives import Objective

__all__ = ["WeightedRule", "enumerate", "support", "expect"]

DEFAULT_MAX_SUPPORT = 4096


class WeightedRule(Estimator):
    """Base of the deterministic rules: weighted particles, the weighted bound's own gradient.

    A rule fixes its particles, so ``num_particles`` stays at its default 1, and the
    objective must have a weighted form (`vitorch.objectives.Objective.weighted_reasons`).
    ``draw`` returns `Particles` with ``weights [K, *batch]``; ``surrogate`` returns
    ``None`` (the weighted bound ``[*batch]`` is differentiated as it is) or, for a split
    objective, a ``[*batch]`` sum of the model's and the guide's weighted bounds.

    References:
        Julier & Uhlmann (1997); Mnih & Gregor (2014): see the module notes.
    """

    def rule_reasons(self, objective: Objective, q: Distribution) -> list[str]:
        """What this rule refuses beyond the shared checks (the family, the support's size)."""
        return []

    def reasons(self, objective, q, num_particles):
        out = []
        if num_particles != 1:
            out.append(
                f"{self.name} places its own particles (a deterministic rule); leave num_particles at 1, "
                f"got K={num_particles}"
            )
        return out + objective.weighted_reasons() + self.rule_reasons(objective, q)

    def surrogate(self, objective, particles, log_p, log_w, bound, context=None):
        if objective.model is objective.guide:
            return None  # nothing random: the weighted bound's gradient is exact
        # A split objective (VIS): the model's parameters act through log p only, the guide's
        # through log q and the weights (the particles are fixed points of the support).
        sg_log_q, sg_weights = particles.log_q.detach(), _detached(particles.weights)
        model = objective.model.bound(log_p - sg_log_q, sg_weights)
        guide = objective.guide.bound(log_p.detach() - particles.log_q, particles.weights)
        return objective.model.sign * model + objective.guide.sign * guide


def _detached(t: Tensor | None) -> Tensor | None:
    return None if t is None else t.detach()


# ---------------------------------------------------------------- finite supports


def _atoms(q: Distribution) -> tuple[Tensor, torch.Size] | None:
    """``(atoms [n, *atom_event], reinterpreted shape)`` of a finite-support family, else ``None``.

    The atoms are one coordinate's possible values; an ``Independent`` product repeats
    them over its reinterpreted dimensions.
    """
    reinterpreted = torch.Size()
    while isinstance(q, Independent):
        base = q.base_dist
        r = q.reinterpreted_batch_ndims
        reinterpreted = base.batch_shape[len(base.batch_shape) - r :] + reinterpreted
        q = base
    if isinstance(q, Bernoulli):
        return torch.tensor([0.0, 1.0], dtype=q.probs.dtype), reinterpreted
    if isinstance(q, OneHotCategorical):
        return torch.eye(q.event_shape[-1], dtype=q.probs.dtype), reinterpreted
    if isinstance(q, Categorical):
        return torch.arange(q._num_events), reinterpreted
    return None


def _support_size(q: Distribution) -> int | None:
    found = _atoms(q)
    if found is None:
        return None
    atoms, reinterpreted = found
    return atoms.shape[0] ** math.prod(reinterpreted)


def support(q: Distribution, max_support: int = DEFAULT_MAX_SUPPORT) -> Tensor:
    """Every point of ``q``'s support, ``[N, *batch, *event]``, the same for every datum.

    ``q`` is a torch ``Categorical``, ``Bernoulli`` or ``OneHotCategorical``, or an
    ``Independent`` product of one of them (nested products too); ``N`` is the product
    of the coordinates' support sizes (``2^D`` for D Bernoulli bits, ``C^D`` for D
    categorical coordinates of C classes).

    Raises:
        ValueError: for another family, or when ``N > max_support``.

    References:
        Mnih & Gregor (ICML 2014); Kingma, Rezende, Mohamed & Welling (NeurIPS 2014).
    """
    found = _atoms(q)
    if found is None:
        raise ValueError(
            f"support: {_family_name(q)} has no finite support to enumerate (use Categorical, Bernoulli, "
            "OneHotCategorical or an Independent product of them)"
        )
    atoms, reinterpreted = found
    m = math.prod(reinterpreted)
    n = atoms.shape[0] ** m
    if n > max_support:
        raise ValueError(f"support: {_family_name(q)} has {n} support points, more than max_support={max_support}")
    grid = torch.cartesian_prod(*[torch.arange(atoms.shape[0])] * m) if m > 1 else torch.arange(atoms.shape[0])
    values = atoms[grid.reshape(n, m)]  # [N, m, *atom_event]
    values = values.reshape(n, *reinterpreted, *atoms.shape[1:]).to(_device(q))
    batch = q.batch_shape
    return values.reshape(n, *([1] * len(batch)), *q.event_shape).expand(n, *batch, *q.event_shape)


def _device(q: Distribution) -> torch.device:
    while isinstance(q, Independent):
        q = q.base_dist
    return q.probs.device


class _Enumerate(WeightedRule):
    """Exact enumeration: one particle per support point, weighted by ``q(z)`` (see `enumerate`)."""

    def __init__(self, max_support: int):
        if isinstance(max_support, bool) or not isinstance(max_support, int) or max_support < 1:
            raise ValueError(f"enumerate: max_support must be a positive integer; got {max_support!r}")
        self.max_support = max_support
        self.name = "enumerate()" if max_support == DEFAULT_MAX_SUPPORT else f"enumerate(max_support={max_support})"

    def rule_reasons(self, objective, q):
        n = _support_size(q)
        if n is None:
            return [
                f"{self.name} sums over a finite support; {_family_name(q)} has none it can enumerate "
                "(Categorical, Bernoulli, OneHotCategorical or Independent products of them)"
            ]
        if n > self.max_support:
            return [f"{self.name}: {_family_name(q)} has {n} support points, more than max_support={self.max_support}"]
        return []

    def particle_count(self, q, num_particles):
        return _support_size(q)

    def draw(self, q, num_particles, objective):
        z = support(q, self.max_support)
        log_q = q.log_prob(z)
        return Particles(z, z, log_q, None, log_q.exp())


def enumerate(max_support: int = DEFAULT_MAX_SUPPORT) -> Estimator:
    """Exact enumeration of a small finite support: zero-variance, exact gradients.

    The particles are every point ``z`` of ``q``'s support (`support`), each weighted
    by ``q(z)``, so the weighted objective is the exact expectation: the ELBO
    ``sum_z q(z) (log p(x, z) - log q(z))``, the weighted IWAE ``log sum_z p(x, z) =
    log p(x)``.  Its gradient for the model's and the guide's parameters (through
    ``log q`` and the weights ``q(z)``) is the exact gradient; a split objective (VIS)
    gives each group its own bound's gradient.

    Args:
        max_support: the largest support (number of particles) it accepts; 4096 by default.

    Returns:
        An estimator for `vitorch.loss` (leave ``num_particles`` at 1).  The guide is a
        torch ``Categorical``, ``Bernoulli`` or ``OneHotCategorical`` or an
        ``Independent`` product of them; the log-joint receives ``z [N, *batch, *event]``.

    Example:
        >>> q = torch.distributions.Categorical(logits=logits)          # batch [B], C classes
        >>> out = vt.loss(log_joint, q, estimator=vt.estimators.enumerate())
        >>> out.bound                                                   # exact ELBO, [B]

    References:
        Mnih & Gregor (ICML 2014); Kingma, Rezende, Mohamed & Welling (NeurIPS 2014),
        who sum the label's expectation over its support.
    """
    return _Enumerate(max_support)


def expect(f: Callable[[Tensor], Tensor], q: Distribution, max_support: int = DEFAULT_MAX_SUPPORT) -> Tensor:
    """``E_q[f(z)] = sum_z q(z) f(z)`` exactly, ``[*batch]``, differentiable in ``f``'s and ``q``'s parameters.

    Args:
        f: maps ``z [N, *batch, *event]`` (the whole support) to ``[N, *batch]``.
        q: a finite-support family (see `support`).
        max_support: the largest support accepted.

    Raises:
        ValueError: for a family without an enumerable support, a support larger than
            ``max_support``, or an ``f`` of the wrong shape.

    References:
        Kingma, Rezende, Mohamed & Welling, *Semi-Supervised Learning with Deep
        Generative Models* (NeurIPS 2014): the label's expectation summed over its support.
    """
    z = support(q, max_support)
    values = f(z)
    expected = torch.Size([z.shape[0]]) + q.batch_shape
    if not isinstance(values, Tensor) or values.shape != expected:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"expect: f must map z {tuple(z.shape)} to shape {tuple(expected)}; got {got}")
    weights = q.log_prob(z).exp()
    return torch.where(weights != 0, weights * values, 0.0).sum(0)
