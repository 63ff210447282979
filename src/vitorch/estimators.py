"""Gradient estimators: how the gradient of an objective reaches the parameters.

An estimator draws ``K`` particles from the guide ``q``, evaluates the log-joint
once, and returns an *ascent surrogate* ``[*batch]`` whose gradient is its estimate
of the objective's gradient; :func:`vitorch.loss` then gives the surrogate the
objective's value.  Each estimator lists what it needs in :meth:`Estimator.reasons`,
which :func:`vitorch.loss` checks before any sampling.

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

References:
    Kingma & Welling (2014); Roeder, Wu & Duvenaud (2017), *Sticking the Landing*;
    Tucker, Lawson, Gu & Maddison (2019), *Doubly Reparameterized Gradient
    Estimators*; Ranganath, Gerrish & Blei (2014), *Black Box Variational
    Inference*; Mnih & Rezende (2016), *Variational Inference for Monte Carlo
    Objectives*; Naesseth et al. (2017), *Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms*.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from . import _logspace as ls
from .families.base import stopped
from .objectives import Objective, elbo

__all__ = [
    "Estimator",
    "reparam",
    "stl",
    "dreg",
    "score",
    "vimco",
    "MovingAverageBaseline",
    "LearnedBaseline",
]

LogJoint = Callable[[Tensor], Tensor]


def _per_particle(coef: Tensor, z: Tensor) -> Tensor:
    """Broadcast ``[K, *batch]`` coefficients over the event dimensions of ``z``."""
    return coef.reshape(coef.shape + (1,) * (z.dim() - coef.dim()))


def _rsample_and_log_prob(q: Distribution, sample_shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """A family's fused draw, or ``rsample`` then ``log_prob`` for a plain torch distribution."""
    fused = getattr(q, "rsample_and_log_prob", None)
    if fused is not None:
        return fused(sample_shape)
    z = q.rsample(sample_shape)
    return z, q.log_prob(z)


def _stopped_log_prob(q: Distribution, z: Tensor) -> Tensor:
    """log q(z) at stopped parameters; ``z`` came from q itself, so its support check is skipped."""
    sq = stopped(q)
    sq._validate_args = False
    return sq.log_prob(z)


def _bound(objective: Objective, log_w: Tensor) -> Tensor:
    """``objective(log_w)``, or on eager CPU code its unguarded form (see
    :meth:`Objective.unguarded`), which :func:`vitorch.loss` re-guards if the loss
    comes out non-finite: one read of a scalar instead of the guard's ops."""
    if ls._fast_path(log_w):
        bound = objective.unguarded(log_w)
        if bound is not None:
            return bound
    return objective(log_w)


def _signed(objective: Objective, coefficients: Tensor) -> Tensor:
    """Ascent coefficients: negated for a bound that is descended (no op otherwise)."""
    return coefficients if objective.sign > 0 else -coefficients


def _weighted_sum(coef: Tensor, x: Tensor) -> Tensor:
    """``sum_k coef_k x_k`` over the finite ``x_k`` only: a particle of zero weight
    (``x_k = -inf``) contributes neither a value nor a gradient."""
    if ls._fast_path(x):
        # A finite total proves every x_k finite, where the mask is the identity.
        out = (coef * x).sum(0)
        if ls._plain_is_safe(out):
            return out
    return torch.where(torch.isfinite(x), coef * x, 0.0).sum(0)


def _family_name(q: Distribution) -> str:
    base = getattr(q, "base_dist", None)
    return f"{type(q).__name__}({_family_name(base)})" if base is not None else type(q).__name__


def _check_log_p(log_p: Tensor, z: Tensor, num_particles: int, batch_shape: torch.Size) -> None:
    shape = log_p.shape
    if shape[:1] == (num_particles,) and shape[1:] == batch_shape:
        return
    expected = torch.Size([num_particles]) + batch_shape
    if shape != expected:
        raise ValueError(
            f"log_joint must map z {tuple(z.shape)} to log-densities of shape {tuple(expected)} "
            f"([K, *batch]); got {tuple(log_p.shape)}"
        )


class Estimator:
    """Base class: ``surrogate(...) -> (ascent surrogate [*batch], log_w [K, *batch], z, bound)``.

    ``bound`` is the objective's value ``[*batch]`` when the surrogate's value is exactly
    ``sign * bound`` (plain autograd through the bound), else ``None``.  In that case
    ``log_w`` keeps its graph and ``bound`` may be the objective's unguarded form, which
    :func:`vitorch.loss` replaces by ``objective(log_w)`` should the loss be non-finite.

    References:
        Mohamed, Rosca, Figurnov & Mnih, *Monte Carlo Gradient Estimation in Machine
        Learning* (JMLR 2020), for the pathwise/score taxonomy used here.
    """

    name = "estimator"
    needs_rsample = False

    def reasons(self, objective: Objective, q: Distribution, num_particles: int) -> list[str]:
        """Why this estimator cannot serve ``objective`` with ``q`` and ``K``; empty if it can."""
        out = []
        if self.needs_rsample and not getattr(q, "has_rsample", False):
            out.append(
                f"{self.name} is a pathwise estimator and needs rsample, but {_family_name(q)} has none; "
                "use score() or vimco"
            )
        return out

    def surrogate(
        self, log_joint: LogJoint, q: Distribution, num_particles: int, objective: Objective, context=None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return self.name


class _Pathwise(Estimator):
    """Reparameterization gradients; ``stop_q`` evaluates log q at stopped parameters."""

    needs_rsample = True
    stop_q = False

    def guide_ratio(self, objective: Objective, log_w: Tensor, c_model: Tensor) -> Tensor:
        """Per-particle factor turning the model's pathwise weights into the guide's."""
        guide = objective.guide
        return ls.weight_ratio(_signed(guide, guide.grad_coefficients(log_w)), c_model)

    def _reweights(self, objective: Objective) -> bool:
        return objective.model is not objective.guide

    def surrogate(self, log_joint, q, num_particles, objective, context=None):
        K = num_particles
        corrected = getattr(q, "has_correction", False)
        if corrected:
            z, log_q, log_corr = q.rsample_with_correction((K,))
        elif self.stop_q:
            z = q.rsample((K,))
        else:
            z, log_q = _rsample_and_log_prob(q, (K,))
        if not self._reweights(objective):
            # Model and guide share one set of weights: plain autograd through the bound.
            log_p = log_joint(z)
            _check_log_p(log_p, z, K, q.batch_shape)
            if self.stop_q:
                log_q = _stopped_log_prob(q, z)
            log_w = log_p - log_q
            bound = _bound(objective, log_w)
            surrogate = bound if objective.sign > 0 else -bound
            bound = None if corrected else bound  # LossOutput detaches it on access
        else:
            bound = None
            z_path = z.view_as(z)
            log_p = log_joint(z_path)
            _check_log_p(log_p, z, K, q.batch_shape)
            if self.stop_q:
                log_q = _stopped_log_prob(q, z_path)
            log_w = log_p - log_q
            with torch.no_grad():
                c_model = _signed(objective.model, objective.model.grad_coefficients(log_w))
                ratio = self.guide_ratio(objective, log_w, c_model)
            surrogate = _weighted_sum(c_model, log_w)
            if z_path.requires_grad:  # not under torch.no_grad()
                z_path.register_hook(lambda g: g * _per_particle(ratio, g))
            if not self.stop_q and log_q.requires_grad:
                log_q.register_hook(lambda g: g * ratio)
        if corrected:
            # RSVI: the acceptance density's score, weighted by the learning signal.
            with torch.no_grad():
                signal = objective.guide.learning_signal(log_w.detach())
            surrogate = surrogate + _weighted_sum(signal, log_corr)
        return surrogate, log_w, z, bound


class _Reparam(_Pathwise):
    """The reparameterization gradient of the objective (Kingma & Welling, 2014).

    Valid for every objective and every family with ``rsample``; with a split
    objective each parameter group follows its own bound.  Families with an
    acceptance-rejection sampler add their RSVI correction (Naesseth et al., 2017).
    """

    name = "reparam"


class _STL(_Pathwise):
    """Sticking the landing (Roeder et al., 2017): log q at stopped parameters.

    It drops the score term ``E[grad log q]``, which is zero for the ELBO, and has
    zero variance when q is the exact posterior.  For multi-sample bounds the
    dropped term is not zero-mean, so STL is restricted to the ELBO; use ``dreg``.
    """

    name = "stl"
    stop_q = True

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if objective.model is not elbo or objective.guide is not elbo:
            out.append(
                f"stl is unbiased only for the ELBO; {objective.name} would get a biased gradient "
                "(use dreg for importance-weighted bounds)"
            )
        if getattr(q, "has_correction", False):
            out.append(f"stl assumes an exact reparameterization; {type(q).__name__} needs an RSVI correction")
        return out


class _DReG(_Pathwise):
    """Doubly reparameterized gradients (Tucker et al., 2019).

    The guide follows ``sum_k sg(c_k) grad_z log w_k dz_k/dphi`` with log q at stopped
    parameters, ``c_k = w~_k^2`` for IWAE (and the matching weights for MIWAE,
    CIWAE and PIWAE's guide); the model keeps its bound's own weights ``w~_k``.
    At K = 1 it is STL.
    """

    name = "dreg"
    stop_q = True

    def guide_ratio(self, objective, log_w, c_model):
        guide = objective.guide
        if guide is objective.model:  # same objective, same sign: the ratio is the bound's own
            return guide.dreg_ratio(log_w, c_model)
        return ls.weight_ratio(_signed(guide, guide.dreg_coefficients(log_w)), c_model)

    def _reweights(self, objective):
        return True

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if not objective.guide.has_dreg:
            out.append(
                f"dreg has no formula for {objective.guide.name}; it is defined for elbo, iwae, miwae, ciwae "
                "and piwae's guide"
            )
        if getattr(q, "has_correction", False):
            out.append(f"dreg assumes an exact reparameterization; {type(q).__name__} needs an RSVI correction")
        return out


reparam = _Reparam()
stl = _STL()
dreg = _DReG()


class _ScoreBase(Estimator):
    """Score-function (REINFORCE) gradients: no path through z, any family with ``log_prob``."""

    baseline = None

    def guide_weights(self, objective: Objective, log_w: Tensor, context) -> tuple[Tensor, Tensor | None]:
        raise NotImplementedError

    def surrogate(self, log_joint, q, num_particles, objective, context=None):
        with torch.no_grad():
            z = q.sample((num_particles,))
        log_p = log_joint(z)
        _check_log_p(log_p, z, num_particles, q.batch_shape)
        log_q = q.log_prob(z)
        log_w = (log_p - log_q).detach()
        with torch.no_grad():
            c_model = objective.model.sign * objective.model.grad_coefficients(log_w)
        a_guide, extra = self.guide_weights(objective, log_w, context)
        surrogate = _weighted_sum(c_model, log_p) + _weighted_sum(a_guide, log_q)
        if extra is not None:  # a learned baseline's regression loss, added with zero value
            surrogate = surrogate - (extra - extra.detach())
        return surrogate, log_w, z, None


class _Score(_ScoreBase):
    """Score function with an optional baseline (Ranganath et al., 2014).

    The guide's gradient is ``sum_k (O - b - dO/dlog w_k) grad log q(z_k)``; for the
    ELBO each particle uses its own log-weight.  ``baseline`` is ``None``, a
    :class:`MovingAverageBaseline` or a :class:`LearnedBaseline`.
    """

    def __init__(self, baseline: nn.Module | None = None):
        if baseline is not None and not isinstance(baseline, (MovingAverageBaseline, LearnedBaseline)):
            raise ValueError(
                f"score: baseline must be None, MovingAverageBaseline or LearnedBaseline; got {type(baseline).__name__}"
            )
        self.baseline = baseline
        self.name = "score" if baseline is None else f"score(baseline={type(baseline).__name__})"

    def reasons(self, objective, q, num_particles):
        out = super().reasons(objective, q, num_particles)
        if self.baseline is not None and objective.guide.name == "forward_chi2":
            out.append("vis's guide uses the self-normalized score gradient, which takes no baseline; use score()")
        return out

    def guide_weights(self, objective, log_w, context):
        guide = objective.guide
        if self.baseline is None:
            with torch.no_grad():
                return guide.score_coefficients(log_w), None
        target = guide.baseline_target(log_w).detach()
        b = self.baseline.predict(context, target)
        with torch.no_grad():
            a = guide.score_coefficients(log_w, b.detach())
        return a, self.baseline.observe(target, b)


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
            signal = torch.where(ls.finite_bound(value) & ls.finite_bound(loo), value - loo, 0.0)
            return guide.sign * (signal - guide.grad_coefficients(log_w)), None


vimco = _VIMCO()


def score(baseline: nn.Module | None = None) -> Estimator:
    """Score-function estimator with an optional ``baseline`` (see :class:`_Score`).

    Needs only ``q.sample`` and ``q.log_prob``; the guide's surrogate weighs each
    particle's ``log q(z_k)`` (shape ``[K, *batch]``) by its learning signal minus the
    baseline's prediction (``[*batch]``).  Ranganath, Gerrish & Blei (2014),
    *Black Box Variational Inference*; Williams (1992) for REINFORCE.
    """
    return _Score(baseline)


class MovingAverageBaseline(nn.Module):
    """Exponential moving average of the learning signal, ``b <- decay b + (1 - decay) mean(O)``.

    A module so that its state is saved with the model and resumes exactly.  It keeps
    one scalar (shape ``[]``) and predicts it for every datum, ``[*batch]``.

    References:
        Williams, *Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning* (Machine Learning, 1992); Ranganath et al. (2014).
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverageBaseline: decay must lie in [0, 1); got {decay!r}")
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def predict(self, context, target: Tensor) -> Tensor:
        return self.value.to(target.dtype).expand(target.shape) if self.initialized else torch.zeros_like(target)

    def observe(self, target: Tensor, prediction: Tensor) -> None:
        finite = target[torch.isfinite(target)]
        if finite.numel() == 0:
            return None
        m = finite.mean().to(self.value.dtype)
        if self.initialized:
            self.value.mul_(self.decay).add_((1 - self.decay) * m)
        else:
            self.value.copy_(m)
            self.initialized.fill_(True)
        return None


class LearnedBaseline(nn.Module):
    """An input-dependent baseline ``b(context)`` fitted by least squares to the learning signal.

    Args:
        net: module mapping the ``context`` passed to :func:`vitorch.loss` to
            ``[*batch]`` (or ``[*batch, 1]``); ``None`` learns one scalar.

    Its regression loss ``mean((O - b)^2)`` is added to the surrogate with zero value,
    so one ``backward`` trains it too: include its parameters in the optimizer.

    References:
        Mnih & Gregor, *Neural Variational Inference and Learning in Belief Networks*
        (ICML 2014): the input-dependent baseline fitted to the learning signal.
    """

    def __init__(self, net: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.constant = nn.Parameter(torch.zeros(())) if net is None else None

    def predict(self, context, target: Tensor) -> Tensor:
        if self.net is None:
            return self.constant.to(target.dtype).expand(target.shape)
        if context is None:
            raise ValueError("LearnedBaseline with a network needs vt.loss(..., context=...)")
        b = self.net(context)
        if b.shape != target.shape:
            b = b.reshape(target.shape)
        return b

    def observe(self, target: Tensor, prediction: Tensor) -> Tensor:
        ok = torch.isfinite(target)
        return torch.where(ok, target - prediction, 0.0).pow(2).mean()
