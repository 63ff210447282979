"""Silent (zero-variance) gradients: the expected log-likelihood of a linear decoder in closed form.

A linear-Gaussian decoder ``p(x | z) = N(x; W z + b, diag(s^2))`` has an expected
log-likelihood under any guide with mean ``m`` and covariance ``S``:

    E_q[log p(x | z)] = log N(x; W m + b, diag(s^2)) - (1/2) sum_o (W S W^T)_oo / s_o^2,

so the ELBO ``E_q[log p(x | z)] - KL(q || p(z))`` is a deterministic function of the
encoder's output and its gradient has no estimation variance at all (Shao, Liu & Van den
Broeck's *Silent Gradients*).  Only the first two moments of q enter, so the same
formula holds for Gaussian guides (diagonal, full-rank, low-rank) and for discrete ones
read as vectors: independent Bernoulli bits (``S = diag(p (1 - p))``) and one-hot
categoricals (``S = diag(p) - p p^T`` per categorical coordinate).  The decoder reads
``z`` flattened to ``prod(event_shape)`` inputs.

A linear decoder is a weak generative model.  The paper uses it to *guide* the encoder
early in training: the encoder's gradient is ``lam_t * g_silent + (1 - lam_t) *
g_stochastic``, where ``g_silent`` comes from the analytic ELBO of an auxiliary linear
decoder and ``g_stochastic`` from the usual Monte Carlo estimator (reparameterization,
REINFORCE, ...) through the expressive decoder, and ``lam_t`` is annealed from 1 to 0
(`anneal`).  `split` gives the guide to each loss with its share of the encoder's
gradient, while each decoder keeps its own full gradient; `combine` adds the two
losses and reports the expressive model's bound.

Example (one training step):

    q = encoder(x)
    q_silent, q_mc = silent.split(q, silent.anneal(step, steps=2000))
    out = silent.combine(silent.loss(x, q_silent, linear_decoder),
                         vt.loss(model.log_joint(x), q_mc))
    out.loss.backward()

References:
    Shao, Liu & Van den Broeck, *Zero-Variance Gradients for Variational Autoencoders*
    (arXiv:2508.03587, 2025); Tipping & Bishop, *Probabilistic Principal Component
    Analysis* (JRSS B 1999) for the linear-Gaussian latent model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    OneHotCategorical,
    kl_divergence,
)

from ._output import LossOutput
from .families.gaussian import DiagNormal, FullRankNormal, LowRankNormal
from .families.kl import _cov_root, _is_diag_normal

__all__ = ["expected_log_lik", "LinearGaussianDecoder", "loss", "anneal", "split", "combine", "scale_gradient"]

_LOG_2PI = math.log(2 * math.pi)
_GAUSSIANS = (DiagNormal, FullRankNormal, LowRankNormal, MultivariateNormal, LowRankMultivariateNormal)


# ---------------------------------------------------------------- moments of the guide


def _base(q: Distribution) -> Distribution:
    while isinstance(q, Independent):
        q = q.base_dist
    return q


def _kind(q: Distribution) -> str:
    """Which moments route ``q`` takes, or ``TypeError`` naming the family."""
    base = _base(q)
    if isinstance(base, OneHotCategorical):
        return "onehot"
    if isinstance(base, Bernoulli):
        return "bernoulli"
    if _is_diag_normal(q) or (isinstance(q, Independent) and isinstance(base, Normal)):
        return "diagonal"
    if isinstance(q, _GAUSSIANS):
        return "root"
    raise TypeError(
        f"silent: no closed-form moments for {type(q).__name__} (use a Gaussian family, "
        "Independent(Bernoulli), OneHotCategorical or Independent(OneHotCategorical))"
    )


def _moments(q: Distribution, weight: Tensor) -> tuple[Tensor, Tensor]:
    """``(E[z] flattened [*batch, D], diag(W S W^T) [*batch, O])`` for ``W [O, D]``."""
    batch, kind, base = q.batch_shape, _kind(q), _base(q)
    if kind == "onehot":
        p = base.probs.expand(*batch, *q.event_shape)  # [*batch, *coords, C]
        c = p.shape[-1]
        w = weight.reshape(weight.shape[0], -1, c)  # [O, L, C]
        pl = p.reshape(*batch, -1, c)  # [*batch, L, C]
        second = torch.einsum("olc,...lc->...o", w.pow(2), pl)
        first = torch.einsum("olc,...lc->...ol", w, pl).pow(2).sum(-1)
        return p.reshape(*batch, -1), second - first  # S = diag(p) - p p^T per coordinate
    if kind == "bernoulli":
        p = base.probs.expand(*batch, *q.event_shape).reshape(*batch, -1)
        return p, (p * (1 - p)) @ weight.pow(2).mT
    if kind == "diagonal":
        return q.mean.reshape(*batch, -1), q.variance.reshape(*batch, -1) @ weight.pow(2).mT
    root = _cov_root(q)  # [*batch, D, E]
    return q.mean, (weight @ root).pow(2).sum(-1)


def expected_log_lik(x: Tensor, q: Distribution, weight: Tensor, bias: Tensor | None = None, scale=1.0) -> Tensor:
    """``E_q[log N(x; W z + b, diag(scale^2))]`` in closed form, ``[*batch]``.

    Args:
        x: ``[*batch, O]`` data.
        q: the guide, batch ``[*batch]``: a Gaussian family (vitorch's or torch's),
            ``Independent(Bernoulli)``, ``OneHotCategorical`` or
            ``Independent(OneHotCategorical)``; z is read flattened to ``D`` entries.
        weight: ``[O, D]`` the decoder's matrix (as ``nn.Linear.weight``).
        bias: ``[O]`` or ``None``.
        scale: the observation noise's standard deviation, a positive number or a
            tensor broadcasting against ``x``.

    Returns:
        ``[*batch]``; differentiable in every argument, with no randomness.

    Raises:
        ValueError: if the shapes disagree or ``scale`` is not positive.
        TypeError: for a guide without closed-form moments.

    References:
        Shao, Liu & Van den Broeck (2025), *Zero-Variance Gradients for Variational Autoencoders*.
    """
    _kind(q)
    if weight.dim() != 2 or x.shape[-1:] != weight.shape[:1]:
        raise ValueError(
            f"expected_log_lik: weight must be [O, D] with O = x.shape[-1]; got weight "
            f"{tuple(weight.shape)}, x {tuple(x.shape)}"
        )
    d = math.prod(q.event_shape) if q.event_shape else 1
    if weight.shape[1] != d:
        raise ValueError(
            f"expected_log_lik: weight {tuple(weight.shape)} must have D = {d} columns "
            f"(q's event {tuple(q.event_shape)} flattened)"
        )
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    if not bool((scale > 0).all()) or not bool(torch.isfinite(scale).all()):
        raise ValueError(f"expected_log_lik: scale must be positive and finite; got {scale.flatten()[:4].tolist()}")
    mean, quad = _moments(q, weight)
    pred = mean @ weight.mT
    if bias is not None:
        pred = pred + bias
    var = scale.pow(2)
    log_lik = -0.5 * ((x - pred).pow(2) + quad) / var - 0.5 * (var.log() + _LOG_2PI)
    return log_lik.sum(-1)


class LinearGaussianDecoder(nn.Module):
    """``p(x | z) = N(x; W z + b, diag(s^2))`` with learnable ``W``, ``b`` and ``log s``.

    Args:
        latent_dim: D, the number of (flattened) latent entries z holds.
        data_dim: O, the data's dimension.
        learn_scale: learn one ``log s`` per output (else ``s`` stays ``init_scale``).
        init_scale: the initial observation standard deviation.

    ``log_prob(z, x)`` scores particles (for Monte Carlo estimators);
    ``expected_log_prob(q, x)`` is the closed form (`expected_log_lik`).

    References:
        Tipping & Bishop (1999); Shao, Liu & Van den Broeck (2025).
    """

    def __init__(self, latent_dim: int, data_dim: int, learn_scale: bool = True, init_scale: float = 1.0):
        super().__init__()
        if not init_scale > 0:
            raise ValueError(f"LinearGaussianDecoder: init_scale must be positive; got {init_scale!r}")
        self.linear = nn.Linear(latent_dim, data_dim)
        log_s = torch.full((data_dim,), math.log(init_scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_s)
        else:
            self.register_buffer("log_scale", log_s)

    def forward(self, z: Tensor) -> Tensor:
        """The mean ``W z + b``: ``[*S, D] -> [*S, O]``."""
        return self.linear(z)

    def log_prob(self, z: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)``: ``z [*S, *batch, D]``, ``x [*batch, O]`` -> ``[*S, *batch]``."""
        s = self.log_scale.exp()
        return (-0.5 * ((x - self.linear(z)) / s).pow(2) - self.log_scale - 0.5 * _LOG_2PI).sum(-1)

    def expected_log_prob(self, q: Distribution, x: Tensor) -> Tensor:
        """``E_q[log p(x | z)]`` in closed form, ``[*batch]``."""
        return expected_log_lik(x, q, self.linear.weight, self.linear.bias, self.log_scale.exp())


def loss(x: Tensor, q: Distribution, decoder: LinearGaussianDecoder, prior: Distribution | None = None) -> LossOutput:
    """The analytic ELBO of a linear-Gaussian decoder: a `vitorch.LossOutput` with zero-variance gradient.

    Args:
        x: ``[B, O]`` data.
        q: the guide, batch ``[B]`` (see `expected_log_lik` for the families).
        decoder: a `LinearGaussianDecoder`.
        prior: ``p(z)`` with a closed-form ``KL(q || p)`` registered with torch; ``None``
            is the standard normal for a Gaussian ``q`` (a discrete ``q`` needs one,
            e.g. a uniform ``OneHotCategorical``).

    Returns:
        ``bound [B] = E_q[log p(x | z)] - KL(q || p)`` and ``loss = -mean(bound)``.

    Raises:
        ValueError: for a discrete guide without a prior.

    References:
        Shao, Liu & Van den Broeck (2025); Kingma & Welling (2014) for the analytic KL.
    """
    if prior is None:
        if _kind(q) not in ("diagonal", "root"):
            raise ValueError(f"silent.loss: a {type(q).__name__} guide needs an explicit prior")
        zeros = torch.zeros(q.event_shape, dtype=q.mean.dtype, device=q.mean.device)
        prior = DiagNormal(zeros, torch.ones_like(zeros), validate_args=False)
    bound = decoder.expected_log_prob(q, x) - kl_divergence(q, prior)
    return LossOutput(-bound.mean(), bound)


# ---------------------------------------------------------------- annealing


def anneal(step: int, steps: int, start: float = 1.0, end: float = 0.0, hold: int = 0) -> float:
    """The silent gradient's share ``lam_t`` at ``step``: ``start`` for ``hold`` steps, then linear to ``end``.

    ``lam_t = start`` for ``t < hold``, ``end`` for ``t >= hold + steps``, and linear in
    between: the encoder follows the analytic gradient early and the stochastic
    estimator at the end (Shao, Liu & Van den Broeck, 2025).

    Raises:
        ValueError: for a negative step or hold, ``steps < 1``, or shares outside ``[0, 1]``.
    """
    if step < 0 or hold < 0 or steps < 1:
        raise ValueError(f"anneal: need step >= 0, hold >= 0 and steps >= 1; got {step}, {hold}, {steps}")
    if not (0.0 <= start <= 1.0 and 0.0 <= end <= 1.0):
        raise ValueError(f"anneal: start and end are shares in [0, 1]; got {start!r}, {end!r}")
    frac = min(max((step - hold) / steps, 0.0), 1.0)
    return start + (end - start) * frac


class _ScaleGrad(torch.autograd.Function):
    """Identity forward, ``c * grad`` backward."""

    @staticmethod
    def forward(ctx, t, c):
        ctx.c = c
        return t.view_as(t)

    @staticmethod
    def backward(ctx, g):
        return g * ctx.c, None


def scale_gradient(t: Tensor, c: float) -> Tensor:
    """``t`` (any shape) in value; the gradient reaching ``t`` through the result is multiplied by ``c``.

    The piece `split` applies to each of a guide's parameters, usable on an encoder's raw
    output tensor too (Shao, Liu & Van den Broeck, 2025, mix the encoder's gradients).
    """
    return _ScaleGrad.apply(t, float(c))


def _rebuild(q: Distribution, c: float) -> Distribution:
    f = lambda t: scale_gradient(t, c)  # noqa: E731
    if isinstance(q, DiagNormal):
        return DiagNormal(f(q.loc), f(q.scale), validate_args=False)
    if isinstance(q, FullRankNormal):
        return FullRankNormal(f(q.loc), f(q.scale_tril), validate_args=False)
    if isinstance(q, LowRankNormal):
        return LowRankNormal(f(q.loc), f(q._cov_factor), f(q._cov_diag), validate_args=False)
    if isinstance(q, Independent):
        return Independent(_rebuild(q.base_dist, c), q.reinterpreted_batch_ndims)
    if isinstance(q, Normal):
        return Normal(f(q.loc), f(q.scale))
    if isinstance(q, (Bernoulli, Categorical, OneHotCategorical)):
        return type(q)(logits=f(q.logits))
    raise TypeError(
        f"silent.split: cannot rebuild {type(q).__name__} (vitorch's Gaussians, Normal, Bernoulli, "
        "Categorical, OneHotCategorical and Independent products of them); split the encoder's output tensor "
        "with scale_gradient instead"
    )


def split(q: Distribution, weight: float) -> tuple[Distribution, Distribution]:
    """Two copies of the guide that share the encoder's gradient ``weight : 1 - weight``.

    Gradients reaching the encoder through the first copy are scaled by ``weight``,
    through the second by ``1 - weight``; values are untouched, and anything that does
    not act through q (the two decoders) keeps its full gradient.  Use the first for
    `loss` (silent) and the second for the stochastic estimator.

    Raises:
        ValueError: if ``weight`` is outside ``[0, 1]``.
        TypeError: for a family it cannot rebuild.

    References:
        Shao, Liu & Van den Broeck (2025): the encoder follows the analytic gradient with
        weight ``lam_t`` and the stochastic estimator with ``1 - lam_t``.
    """
    weight = float(weight)
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"silent.split: weight must lie in [0, 1]; got {weight!r}")
    return _rebuild(q, weight), _rebuild(q, 1.0 - weight)


def combine(silent: LossOutput, stochastic: LossOutput) -> LossOutput:
    """One `vitorch.LossOutput` for both losses: their sum, reporting the stochastic model's bound.

    The silent loss trains the auxiliary linear decoder and guides the encoder; the
    stochastic one is the model being fitted, so its bound ``[B]``, log-weights
    ``[K, B]`` and particles are what `vitorch.fit` logs and evaluates; the loss is the
    scalar sum (Shao, Liu & Van den Broeck, 2025).
    """
    return LossOutput(
        silent.loss + stochastic.loss, stochastic.bound, stochastic.log_w, stochastic.z, stochastic.weights
    )
