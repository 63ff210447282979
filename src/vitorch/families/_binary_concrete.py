"""The binary Concrete relaxation of a Bernoulli variable, and its straight-through variant.

For ``K = 2`` the Concrete distribution (`vitorch.families.concrete`) is a law on
``(0, 1)``: ``x = sigmoid((logit + log U - log(1 - U)) / lambda)`` with density
``lambda a x^(-lambda-1) (1-x)^(-lambda-1) / (a x^(-lambda) + (1-x)^(-lambda))^2``,
``a = e^logit`` (Maddison et al., 2017, eq. 10).  The straight-through variant returns
``h = [x > 1/2]``, exactly Bernoulli(``probs``) distributed, with the relaxed sample's
gradient.  Event shape ``[]``, as torch's ``RelaxedBernoulli``: parameters and draws are
``[*batch]`` (``[*sample, *batch]``).

Both classes are public as `vitorch.families.concrete.RelaxedBernoulli` and
`vitorch.families.concrete.RelaxedBernoulliStraightThrough`.

References:
    Maddison, Mnih & Teh, The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables (ICLR 2017).
    Jang, Gu & Poole, Categorical Reparameterization with Gumbel-Softmax (ICLR 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints
from torch.nn import functional as F

from ._concrete_base import _HardMoments, _Relaxed, _StraightThrough
from .base import cast_value

__all__ = ["binary_concrete_log_prob", "RelaxedBernoulli", "RelaxedBernoulliStraightThrough"]


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


def binary_concrete_log_prob(logits: Tensor, temperature: Tensor, value: Tensor) -> Tensor:
    """Log-density of the binary Concrete (Maddison et al., 2017, eq. 10 and appendix) at ``value``.

    Args:
        logits: ``[*batch]`` log-odds.
        temperature: ``[*batch]`` positive.
        value: ``[*sample, *batch]`` points in ``(0, 1)``.

    Returns:
        ``[*sample, *batch]`` (the three broadcast elementwise):
        ``log lambda + logit - (lambda+1)(log x + log(1-x)) - 2 log(e^logit x^-lambda + (1-x)^-lambda)``.
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


class RelaxedBernoulliStraightThrough(_HardMoments, RelaxedBernoulli):
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

    def entropy(self) -> Tensor:
        p = self.probs
        return p * F.softplus(-self.logits) + (1 - p) * F.softplus(self.logits)
