"""Concrete (Gumbel-softmax) relaxations of categorical and Bernoulli variables, and their
straight-through variants.

A categorical variable with class probabilities ``pi`` is ``onehot(argmax_k (log pi_k + G_k))``
with i.i.d. standard Gumbel noise ``G`` (the Gumbel-max trick).  The Concrete distribution
replaces the argmax by a softmax at temperature ``lambda``,

    ``x = softmax((log pi + G) / lambda)``,

a reparameterizable point on the simplex whose density with respect to Lebesgue measure on
its first ``K - 1`` coordinates is (Maddison et al., 2017, eq. 9)

    ``p(x) = (K - 1)! lambda^(K-1) prod_k pi_k x_k^(-lambda-1) / (sum_i pi_i x_i^(-lambda))^K``.

For ``K = 2`` it is the binary Concrete on ``(0, 1)``:
``x = sigmoid((logit + log U - log(1 - U)) / lambda)`` with density
``lambda a x^(-lambda-1) (1-x)^(-lambda-1) / (a x^(-lambda) + (1-x)^(-lambda))^2``, ``a = e^logit``.

The straight-through variants (Jang et al., 2017, sec. 2.2; Bengio et al., 2013) return the
hard one-hot (or 0/1) value ``h`` in the forward pass with the relaxed sample's gradient,
``h + (x - stop(x))``.  The value is then exactly Categorical(``pi``) (Bernoulli) distributed,
so their ``log_prob`` is that pmf, ``sum_k h_k log pi_k``; the gradient is the relaxed
surrogate and is biased for the discrete objective.

Arguments follow ``torch.distributions.RelaxedOneHotCategorical``: ``temperature`` and one of
``probs`` / ``logits``.

Numerics: draws are clamped to at least the dtype's smallest normal number (and a Bernoulli
draw to at most ``1 - eps/2``), so ``log x`` stays finite; ``log_prob`` is the density at the
returned value.  At temperatures far below ``0.1`` float32 draws pile up on the clamp; use
float64 or the straight-through variants there.

References:
    Maddison, Mnih & Teh, The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables (ICLR 2017).
    Jang, Gu & Poole, Categorical Reparameterization with Gumbel-Softmax (ICLR 2017).
    Bengio, Leonard & Courville, Estimating or Propagating Gradients Through Stochastic Neurons
    (arXiv:1308.3432, 2013): the straight-through estimator.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.distributions import Categorical, OneHotCategorical, constraints, register_kl
from torch.nn import functional as F

from .base import Family, as_params, cast_value, check_param
from .constraints import finite_real, positive_finite, simplex

__all__ = [
    "RelaxedOneHotCategorical",
    "RelaxedOneHotCategoricalStraightThrough",
    "RelaxedBernoulli",
    "RelaxedBernoulliStraightThrough",
]


class _OpenUnitInterval(constraints.Constraint):
    def check(self, value):
        return (value > 0) & (value < 1)

    def __repr__(self):
        return "OpenInterval(0, 1)"


class _Probability(constraints.Constraint):
    def check(self, value):
        return (value >= 0) & (value <= 1)

    def __repr__(self):
        return "Interval(0, 1)"


def _one_of(family: str, probs, logits) -> tuple[str, Tensor]:
    if (probs is None) == (logits is None):
        raise ValueError(f"{family}: give exactly one of probs and logits")
    return ("probs", probs) if probs is not None else ("logits", logits)


class _Relaxed(Family):
    """Temperature and class parameters shared by the four families (``event_dims`` 1 or 0)."""

    has_rsample = True
    event_dims = 1
    # probs is converted to logits; each is checked by its own constraint where given.
    arg_constraints = {"temperature": positive_finite}

    def __init__(self, temperature, probs=None, logits=None, validate_args: bool | None = None):
        name = type(self).__name__
        which, value = _one_of(name, probs, logits)
        temperature, value = as_params(name, temperature=temperature, **{which: value})
        if value.dim() < self.event_dims:
            raise ValueError(f"{name}: {which} must be [*batch, K] (at least 1-D); got shape {tuple(value.shape)}")
        batch_of_value = value.shape[: value.dim() - self.event_dims]
        try:
            batch = torch.broadcast_shapes(batch_of_value, temperature.shape)
        except RuntimeError:
            raise ValueError(
                f"{name}: temperature {tuple(temperature.shape)} does not broadcast with the batch shape "
                f"{tuple(batch_of_value)} of {which} {tuple(value.shape)}"
            ) from None
        validate = torch.distributions.Distribution._validate_args if validate_args is None else validate_args
        if validate:
            check_param(
                "temperature", temperature, "PositiveFinite(x > 0 and finite)", positive_finite.check(temperature), name
            )
            if which == "probs":
                ok = self._probs_ok(value)
                check_param("probs", value, self._probs_constraint, ok, name)
            else:
                check_param("logits", value, "FiniteReal()", finite_real.check(value), name)
        self.temperature = temperature
        # Kept as given and converted on use, so that loading new values into the given
        # tensors (a checkpoint) changes the family.
        self._which, self._param = which, value
        event = value.shape[value.dim() - self.event_dims :]
        super()._init_checked(batch, event, False)
        self._validate_args = bool(validate)

    # ---- parametrization hooks (categorical by default) -----------------------------------
    _probs_constraint = "Simplex()"

    @staticmethod
    def _probs_ok(p: Tensor) -> Tensor:
        return simplex.check(p) & torch.isfinite(p).all(-1)

    @staticmethod
    def _normalized_logits(logits: Tensor) -> Tensor:
        return logits - logits.logsumexp(-1, keepdim=True)

    @staticmethod
    def _probs_to_logits(p: Tensor) -> Tensor:
        # A zero probability would give logit -inf and NaN densities; torch clamps the same way.
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()

    @property
    def logits(self) -> Tensor:
        """``[*batch, K]`` normalized log-probabilities (log-odds ``[*batch]`` for a Bernoulli)."""
        if self._which == "logits":
            return self._normalized_logits(self._param)
        return self._probs_to_logits(self._param)

    def _raw_logits(self) -> Tensor:
        # Unnormalized: the Gumbel-softmax draw and the Concrete density ignore an additive constant.
        return self._param if self._which == "logits" else self._probs_to_logits(self._param)

    @property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    def _temp(self) -> Tensor:
        return self.temperature.unsqueeze(-1) if self.event_dims else self.temperature

    # ---- torch plumbing ---------------------------------------------------------------------
    def _rebuild(self, temperature: Tensor, param: Tensor):
        new = type(self)(temperature, **{self._which: param}, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def detach(self):
        return self._rebuild(self.temperature.detach(), self._param.detach())

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        temperature = self.temperature.expand(batch_shape)
        return self._rebuild(temperature, self._param.expand(batch_shape + self.event_shape))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"


class _StraightThrough(torch.autograd.Function):
    """Value ``hard``, gradient that of ``relaxed``: ``hard + (relaxed - stop(relaxed))`` in one op."""

    @staticmethod
    def forward(relaxed: Tensor, hard: Tensor) -> Tensor:
        return hard

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


# -------------------------------------------------------------------- categorical


def concrete_log_prob(logits: Tensor, temperature: Tensor, log_x: Tensor) -> Tensor:
    """Log-density of the Concrete distribution (Maddison et al., 2017, eq. 9) at ``x = exp(log_x)``.

    Args:
        logits: ``[*batch, K]`` log class probabilities (any additive constant).
        temperature: ``[*batch]`` positive.
        log_x: ``[*sample, *batch, K]`` logarithms of a point on the simplex.

    Returns:
        ``[*sample, *batch]``: ``log (K-1)! + (K-1) log lambda + sum_k (logit_k - (lambda+1) log x_k)
        - K logsumexp_k(logit_k - lambda log x_k)``.
    """
    k = log_x.shape[-1]
    lam = temperature.unsqueeze(-1)
    const = math.lgamma(k) + (k - 1) * temperature.log()
    return const + (logits - (lam + 1) * log_x).sum(-1) - k * (logits - lam * log_x).logsumexp(-1)


class RelaxedOneHotCategorical(_Relaxed):
    """Concrete / Gumbel-softmax relaxation of a one-hot categorical (Maddison et al., 2017;
    Jang et al., 2017).

    Args:
        temperature: ``[*batch]`` (or broadcastable, e.g. a float) positive ``lambda``; it may
            carry a gradient.
        probs: ``[*batch, K]`` class probabilities on the simplex, or
        logits: ``[*batch, K]`` unnormalized log-probabilities (finite).
        validate_args: check parameters and ``log_prob`` inputs.

    Shapes: ``rsample((S,))`` is ``[S, *batch, K]`` on the simplex; ``log_prob`` is
    ``[S, *batch]``, the Concrete density (module docstring).  Works with every pathwise
    estimator; the mean has no closed form.

    Example:
        >>> q = RelaxedOneHotCategorical(0.5, logits=torch.zeros(4, 3))
        >>> x, log_q = q.rsample_and_log_prob((8,))     # [8, 4, 3], [8, 4]
    """

    support = simplex

    def _log_relaxed(self, sample_shape) -> Tensor:
        """``log x`` of a Concrete draw, ``[*sample, *batch, K]``, clamped at ``log tiny``."""
        shape = self._extended_shape(sample_shape)
        tiny = torch.finfo(self._param.dtype).tiny
        # Gumbel noise -log(-log U); torch's rand is several times cheaper than exponential_.
        eps = torch.finfo(self._param.dtype).eps
        u = torch.rand(shape, dtype=self._param.dtype, device=self._param.device).clamp_(tiny, 1 - eps)
        gumbel = -torch.log(-torch.log(u))
        log_x = torch.log_softmax((self._raw_logits() + gumbel) / self._temp(), -1)
        return log_x.clamp_min(math.log(tiny))

    def _relaxed(self, sample_shape) -> Tensor:
        return self._log_relaxed(sample_shape).exp()

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self._relaxed(torch.Size(sample_shape))

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        # The density from the draw's own log x (log(exp(log x)) would only add a rounding).
        log_x = self._log_relaxed(torch.Size(sample_shape))
        return log_x.exp(), concrete_log_prob(self._raw_logits(), self.temperature, log_x)

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` Concrete log-density at ``value [*sample, *batch, K]`` on the simplex."""
        if self._validate_args:
            self._validate_sample(value)
        value = cast_value(value, self._param.dtype)
        return concrete_log_prob(self._raw_logits(), self.temperature, value.log())


class RelaxedOneHotCategoricalStraightThrough(RelaxedOneHotCategorical):
    """Straight-through Gumbel-softmax: one-hot values, the Concrete sample's gradient (Jang et al.,
    2017, sec. 2.2).

    ``rsample`` returns ``h + (x - stop(x))`` with ``x`` a `RelaxedOneHotCategorical` draw and
    ``h = onehot(argmax x)``: the value is exactly one-hot and Categorical(``probs``)
    distributed (Gumbel-max), the gradient is ``dx/dtheta``.  ``log_prob`` is the categorical
    pmf ``sum_k h_k log pi_k``; ``mean`` is ``probs``.  Arguments as `RelaxedOneHotCategorical`.
    The gradient is biased for the discrete objective (a relaxation at the temperature given).

    Example:
        >>> q = RelaxedOneHotCategoricalStraightThrough(1.0, probs=torch.tensor([0.2, 0.3, 0.5]))
        >>> h = q.rsample((4,))                          # [4, 3], rows one-hot
    """

    support = constraints.one_hot

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        x = self._relaxed(torch.Size(sample_shape))
        return _StraightThrough.apply(x, torch.zeros_like(x).scatter_(-1, x.argmax(-1, keepdim=True), 1.0))

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        h = self.rsample(sample_shape)
        return h, (h * self.logits).sum(-1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` categorical log-pmf of one-hot ``value [*sample, *batch, K]``."""
        if self._validate_args:
            self._validate_sample(value)
        return (cast_value(value, self._param.dtype) * self.logits).sum(-1)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)


# -------------------------------------------------------------------- Bernoulli


def binary_concrete_log_prob(logits: Tensor, temperature: Tensor, value: Tensor) -> Tensor:
    """Log-density of the binary Concrete (Maddison et al., 2017, eq. 10 and appendix) at ``value``.

    ``log lambda + logit - (lambda+1)(log x + log(1-x)) - 2 log(e^logit x^-lambda + (1-x)^-lambda)``,
    elementwise; ``logits`` and ``temperature`` broadcast with ``value``.
    """
    log_x, log_1mx = value.log(), torch.log1p(-value)
    lam = temperature
    mix = torch.logaddexp(logits - lam * log_x, -lam * log_1mx)
    return lam.log() + logits - (lam + 1) * (log_x + log_1mx) - 2 * mix


class RelaxedBernoulli(_Relaxed):
    """Binary Concrete relaxation of a Bernoulli variable (Maddison et al., 2017; Jang et al., 2017).

    ``x = sigmoid((logit + L) / lambda)`` with ``L = log U - log(1 - U)`` standard logistic.

    Args:
        temperature: ``[*batch]`` (or broadcastable) positive ``lambda``.
        probs: ``[*batch]`` probabilities in ``[0, 1]``, or
        logits: ``[*batch]`` log-odds (finite).
        validate_args: check parameters and ``log_prob`` inputs.

    Event shape ``[]`` (as torch's ``RelaxedBernoulli``): ``rsample((S,))`` is ``[S, *batch]`` in
    ``(0, 1)`` and ``log_prob`` the binary Concrete density, elementwise.

    Example:
        >>> q = RelaxedBernoulli(0.5, logits=torch.zeros(6))
        >>> x, log_q = q.rsample_and_log_prob((8,))     # [8, 6], [8, 6]
    """

    event_dims = 0
    support = _OpenUnitInterval()
    _probs_constraint = "Interval(0, 1)"

    @staticmethod
    def _probs_ok(p: Tensor) -> Tensor:
        return _Probability().check(p)

    @staticmethod
    def _normalized_logits(logits: Tensor) -> Tensor:
        return logits

    @staticmethod
    def _probs_to_logits(p: Tensor) -> Tensor:
        info = torch.finfo(p.dtype)
        p = p.clamp(info.tiny, 1 - info.eps)
        return p.log() - torch.log1p(-p)

    @property
    def probs(self) -> Tensor:
        return torch.sigmoid(self.logits)

    def _noise_sum(self, sample_shape) -> Tensor:
        shape = self._extended_shape(sample_shape)
        info = torch.finfo(self._param.dtype)
        u = torch.rand(shape, dtype=self._param.dtype, device=self._param.device).clamp(info.tiny, 1 - info.eps)
        return (self.logits + (u.log() - torch.log1p(-u))) / self.temperature

    def _relaxed(self, sample_shape) -> Tensor:
        info = torch.finfo(self._param.dtype)
        return torch.sigmoid(self._noise_sum(sample_shape)).clamp(info.tiny, 1 - info.eps / 2)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self._relaxed(torch.Size(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` binary Concrete log-density at ``value`` in ``(0, 1)``."""
        if self._validate_args:
            self._validate_sample(value)
        return binary_concrete_log_prob(self.logits, self.temperature, cast_value(value, self._param.dtype))


class RelaxedBernoulliStraightThrough(RelaxedBernoulli):
    """Straight-through binary Concrete: 0/1 values, the relaxed sample's gradient.

    ``rsample`` returns ``h + (x - stop(x))`` with ``h = [x > 1/2]`` (equivalently
    ``logit + L > 0``), so the value is exactly Bernoulli(``probs``); ``log_prob`` is the
    Bernoulli log-pmf and ``mean`` is ``probs``.  Arguments as `RelaxedBernoulli`.

    Shapes: ``rsample((S,))`` is ``[S, *batch]`` with values in {0, 1}; ``log_prob`` maps
    ``[S, *batch]`` to ``[S, *batch]``.

    References:
        Maddison, Mnih & Teh (ICLR 2017); Jang, Gu & Poole (ICLR 2017), sec. 2.2;
        Bengio, Leonard & Courville (arXiv:1308.3432, 2013).
    """

    support = constraints.boolean

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        s = self._noise_sum(torch.Size(sample_shape))
        x = torch.sigmoid(s)
        return _StraightThrough.apply(x, (s > 0).to(x.dtype))

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` Bernoulli log-pmf ``h log p + (1 - h) log(1 - p)`` of ``value`` in {0, 1}."""
        if self._validate_args:
            self._validate_sample(value)
        h = cast_value(value, self._param.dtype)
        return -h * F.softplus(-self.logits) - (1 - h) * F.softplus(self.logits)

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)

    def entropy(self) -> Tensor:
        p = self.probs
        return p * F.softplus(-self.logits) + (1 - p) * F.softplus(self.logits)


# The straight-through values are exactly categorical / Bernoulli, so their KL to a categorical
# (e.g. a uniform prior) is the discrete one.
@register_kl(RelaxedOneHotCategoricalStraightThrough, RelaxedOneHotCategoricalStraightThrough)
@register_kl(RelaxedOneHotCategoricalStraightThrough, OneHotCategorical)
@register_kl(RelaxedOneHotCategoricalStraightThrough, Categorical)
def _kl_straight_through_categorical(q, p) -> Tensor:
    return (q.probs * (q.logits - p.logits)).sum(-1)
