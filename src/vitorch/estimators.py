"""Gradient estimators: how the gradient of an objective reaches the parameters.

An estimator does two things for `vitorch.loss`: it *draws* K particles from the
guide ``q`` (with ``log q``, at stopped parameters where it needs that), and, once the
log-joint has been read, it builds an *ascent surrogate* ``[*batch]`` whose gradient is
its estimate of the objective's gradient.  What it needs from the objective it derives
from the objective's value by autograd on the small ``[K, *batch]`` log-weight tensor
(`grad_weights`, `dreg_weights`, `learning_signal`), using an
objective's closed form where it has one.  Each estimator lists what it refuses in
`Estimator.reasons`, which `vitorch.loss` checks before any sampling.

Two groups of parameters are told apart by where they act, never by name: the
model's parameters act through ``log p(x, z)`` at fixed ``z``, the guide's through
``z`` and ``log q``.  Where the guide's weights differ from the model's (DReG,
split objectives) a backward hook on the particles rescales the guide's share
per particle, so the log-joint is evaluated once.  The price is a precision limit:
the rescaled gradient was computed with the model's weight, so a particle whose
model weight is subnormal in the working precision passes no gradient to the guide
(float32: weights below 1.2e-38, i.e. log-weights ~87 nats under the best particle).
That is exact for IWAE-type guides, whose weight is then as small; PIWAE's guide
can weigh such a particle within its group, so use float64 when log-weights spread
that far.

Deterministic rules replace random draws by weighted particles (`Particles.weights`):
`enumerate` sums exactly over a small finite support (`vitorch.quadrature`) and
`unscented` places 2D + 1 sigma points of a Gaussian (`vitorch.unscented`).  Nothing
is random, so the weighted bound's own gradient is theirs (zero variance).

References:
    Kingma & Welling (2014); Roeder, Wu & Duvenaud (2017), *Sticking the Landing*;
    Tucker, Lawson, Gu & Maddison (2019), *Doubly Reparameterized Gradient
    Estimators*; Ranganath, Gerrish & Blei (2014), *Black Box Variational
    Inference*; Mnih & Rezende (2016), *Variational Inference for Monte Carlo
    Objectives*; Naesseth et al. (2017), *Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms*; Julier & Uhlmann (1997) and Janjoš et al.
    (2023), *Unscented Autoencoder*, for sigma points.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

from . import _logspace as ls
from ._baselines import LearnedBaseline, MovingAverageBaseline
from ._particles import Estimator, Particles
from ._weights import _per_particle, _signed, _warn_if_lost, _weighted_sum, dreg_weights, grad_weights, learning_signal
from .families.base import rsample_and_stopped_log_prob
from .objectives import Objective
from .quadrature import enumerate, support
from .unscented import sigma_points, unscented

__all__ = [
    "Estimator",
    "Particles",
    "reparam",
    "stl",
    "dreg",
    "score",
    "vimco",
    "grad_weights",
    "dreg_weights",
    "learning_signal",
    "MovingAverageBaseline",
    "LearnedBaseline",
    "enumerate",
    "unscented",
    "support",
    "sigma_points",
]


class _Pathwise(Estimator):
    """Reparameterization gradients; ``stop_q`` evaluates log q at stopped parameters."""

    needs_rsample = True
    stop_q = False

    def guide_weights(self, objective: Objective, log_w: Tensor) -> Tensor:
        return _signed(objective.guide, grad_weights(objective.guide, log_w))

    def _reweights(self, objective: Objective) -> bool:
        return objective.model is not objective.guide

    def draw(self, q, num_particles, objective):
        shape = (num_particles,)
        if getattr(q, "has_correction", False):
            z, log_q, correction = q.rsample_with_correction(shape)
            return Particles(z, z, log_q, correction)
        if self.stop_q:
            # log q at stopped parameters, its value read from the noise where the family can
            # (exact for an ill-conditioned factor, unlike a solve on the rounded z).  Its
            # gradient reaches z directly, not through ``read``: surrogate() rescales it with a
            # hook on log_q, as for the other pathwise estimators.
            z, log_q = rsample_and_stopped_log_prob(q, shape)
        else:
            fused = getattr(q, "rsample_and_log_prob", None)
            z, log_q = fused(shape) if fused is not None else _rsample_then_log_prob(q, shape)
        read = z.view_as(z) if self._reweights(objective) else z
        return Particles(z, read, log_q, None)

    def surrogate(self, objective, particles, log_p, log_w, bound, context=None):
        if not self._reweights(objective):
            # Model and guide share one set of weights: plain autograd through the bound.
            if particles.correction is None:
                return None
            surrogate = bound if objective.sign > 0 else -bound
        else:
            with torch.no_grad():
                c_model = _signed(objective.model, grad_weights(objective.model, log_w))
                c_guide = self.guide_weights(objective, log_w)
                ratio = ls.weight_ratio(c_guide, c_model)
            # Only a split objective's guide can weigh a particle its model weight ignores; a
            # warning cannot be read inside a compiled graph.
            if objective.model is not objective.guide and not torch.compiler.is_compiling():
                _warn_if_lost(objective, c_model, c_guide)
            surrogate = _weighted_sum(c_model, log_w)
            read, log_q = particles.read, particles.log_q
            if read.requires_grad:  # not under torch.no_grad()
                read.register_hook(lambda g: g * _per_particle(ratio, g))
            if log_q.requires_grad:  # stopped or not, every path from log_q is the guide's
                log_q.register_hook(lambda g: g * ratio)
        if particles.correction is not None:
            # RSVI: the acceptance density's score, weighted by the learning signal.
            with torch.no_grad():
                signal = _signed(objective.guide, learning_signal(objective.guide, log_w.detach()))
            surrogate = surrogate + _weighted_sum(signal, particles.correction)
        return surrogate


def _rsample_then_log_prob(q: Distribution, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    z = q.rsample(shape)
    return z, q.log_prob(z)


class _Reparam(_Pathwise):
    """The reparameterization gradient of the objective (Kingma & Welling, 2014).

    Valid for every objective and every family with ``rsample``; with a split
    objective each parameter group follows its own bound.  Families with an
    acceptance-rejection sampler add their RSVI correction (Naesseth et al., 2017).
    """

    name = "reparam"


def _exact_reparam(estimator: Estimator, q: Distribution) -> list[str]:
    if getattr(q, "has_correction", False):
        return [f"{estimator.name} assumes an exact reparameterization; {type(q).__name__} needs an RSVI correction"]
    return []


class _STL(_Pathwise):
    """Sticking the landing (Roeder et al., 2017): log q at stopped parameters.

    It drops the score term ``E[sum_k c_k grad log q(z_k)]``, which is zero exactly
    when each particle's weight ``c_k`` does not depend on its own log-weight: the
    ELBO.  For multi-sample bounds the dropped term is not zero-mean; use ``dreg``.
    """

    name = "stl"
    stop_q = True

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if not (objective.model.particlewise and objective.guide.particlewise):
            out.append(
                f"stl is unbiased only for a mean of per-particle terms (the ELBO); {objective.name} would get "
                "a biased gradient (use dreg for importance-weighted bounds)"
            )
        return out + _exact_reparam(self, q)


class _DReG(_Pathwise):
    """Doubly reparameterized gradients (Tucker et al., 2019), for any smooth objective.

    The guide follows ``sum_k sg(c_k - dc_k/dlog w_k) grad_z log w_k dz_k/dphi`` with
    log q at stopped parameters (`dreg_weights`); the model keeps its bound's own
    weights ``c_k``.  For the ELBO it is STL.
    """

    name = "dreg"
    stop_q = True

    def guide_weights(self, objective, log_w):
        return _signed(objective.guide, dreg_weights(objective.guide, log_w))

    def _reweights(self, objective):
        return not (objective.model.particlewise and objective.guide is objective.model)

    def reasons(self, objective, q, num_particles):
        return super().reasons(objective, q, num_particles) + _exact_reparam(self, q)


reparam = _Reparam()
stl = _STL()
dreg = _DReG()


class _ScoreBase(Estimator):
    """Score-function (REINFORCE) gradients: no path through z, any family with ``log_prob``."""

    def guide_weights(self, objective: Objective, log_w: Tensor, context) -> tuple[Tensor, Tensor | None]:
        """Ascent weights ``[K, *batch]`` of ``log q(z_k)``, and a baseline's regression loss or ``None``."""
        raise NotImplementedError

    def draw(self, q, num_particles, objective):
        with torch.no_grad():
            z = q.sample((num_particles,))
        return Particles(z, z, q.log_prob(z), None)

    def surrogate(self, objective, particles, log_p, log_w, bound, context=None):
        log_w = log_w.detach()
        with torch.no_grad():
            c_model = _signed(objective.model, grad_weights(objective.model, log_w))
        a_guide, extra = self.guide_weights(objective, log_w, context)
        surrogate = _weighted_sum(c_model, log_p) + _weighted_sum(a_guide, particles.log_q)
        if extra is not None:  # a learned baseline's regression loss, added with zero value
            surrogate = surrogate - (extra - extra.detach())
        return surrogate


class _Score(_ScoreBase):
    """Score function with an optional baseline (Ranganath et al., 2014).

    The guide's gradient is ``sum_k (L_k - b - dO/dlog w_k) grad log q(z_k)`` with the
    objective's learning signal ``L`` (`learning_signal`); ``baseline`` is
    ``None``, a `MovingAverageBaseline` or a `LearnedBaseline`.
    """

    def __init__(self, baseline=None):
        if baseline is not None and not isinstance(baseline, (MovingAverageBaseline, LearnedBaseline)):
            raise ValueError(
                f"score: baseline must be None, MovingAverageBaseline or LearnedBaseline; got {type(baseline).__name__}"
            )
        self.baseline = baseline
        self.name = "score" if baseline is None else f"score(baseline={type(baseline).__name__})"

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if self.baseline is not None and not objective.guide.takes_baseline:
            out.append(f"{objective.guide.name}'s self-normalized score gradient takes no baseline; use score()")
        return out

    def guide_weights(self, objective, log_w, context):
        guide = objective.guide
        closed = getattr(guide, "score_coefficients", None)
        if closed is not None:
            return closed(log_w), None
        extra, b = None, 0.0
        if self.baseline is not None:
            target = guide(log_w)
            prediction = self.baseline.predict(context, target)
            extra, b = self.baseline.observe(target, prediction), prediction.detach()
        with torch.no_grad():
            signal = learning_signal(guide, log_w, b) - grad_weights(guide, log_w)
        return _signed(guide, signal), extra


class _VIMCO(_ScoreBase):
    """VIMCO (Mnih & Rezende, 2016): per-particle leave-one-out baselines.

    Particle k's learning signal is ``O(log w) - O(log w with log w_k replaced by
    the mean of the others)``, which does not depend on ``z_k`` and needs K >= 2.
    Costs ``O(K^2)`` per datum.
    """

    name = "vimco"

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if num_particles < 2:
            out.append(f"vimco's leave-one-out baseline needs K >= 2; got K={num_particles}")
        return out

    def guide_weights(self, objective, log_w, context):
        guide = objective.guide
        with torch.no_grad():
            K = log_w.shape[0]
            eye = torch.eye(K, dtype=torch.bool, device=log_w.device).reshape(K, K, *([1] * (log_w.dim() - 1)))
            others = torch.where(eye, 0.0, log_w.unsqueeze(1)).sum(0) / (K - 1)  # [K, *batch]
            # replaced[j, k] = log_w_j, except log_w_k -> mean of the others
            replaced = torch.where(eye, others.unsqueeze(0), log_w.unsqueeze(1))
            value = guide(log_w).unsqueeze(0)
            loo = guide(replaced)
            signal = ls.masked(value - loo, ls.finite_bound(value) & ls.finite_bound(loo))
        return _signed(guide, signal - grad_weights(guide, log_w)), None


vimco = _VIMCO()


def score(baseline=None) -> Estimator:
    """Score-function estimator with an optional ``baseline`` (see `_Score`).

    Needs only ``q.sample`` and ``q.log_prob``; the guide's surrogate weighs each
    particle's ``log q(z_k)`` (shape ``[K, *batch]``) by its learning signal minus the
    baseline's prediction (``[*batch]``).  Ranganath, Gerrish & Blei (2014),
    *Black Box Variational Inference*; Williams (1992) for REINFORCE.
    """
    return _Score(baseline)
