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

from ._binary_concrete import RelaxedBernoulli, RelaxedBernoulliStraightThrough, binary_concrete_log_prob
from ._concrete_base import _HardMoments, _Relaxed, _StraightThrough
from .base import cast_value
from .constraints import simplex

__all__ = [
    "RelaxedOneHotCategorical",
    "RelaxedOneHotCategoricalStraightThrough",
    "RelaxedBernoulli",
    "RelaxedBernoulliStraightThrough",
    "concrete_log_prob",
    "binary_concrete_log_prob",
]


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


class RelaxedOneHotCategoricalStraightThrough(_HardMoments, RelaxedOneHotCategorical):
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

    def entropy(self) -> Tensor:
        return -(self.probs * self.logits).sum(-1)


# The straight-through values are exactly categorical / Bernoulli, so their KL to a categorical
# (e.g. a uniform prior) is the discrete one.
@register_kl(RelaxedOneHotCategoricalStraightThrough, RelaxedOneHotCategoricalStraightThrough)
@register_kl(RelaxedOneHotCategoricalStraightThrough, OneHotCategorical)
@register_kl(RelaxedOneHotCategoricalStraightThrough, Categorical)
def _kl_straight_through_categorical(q, p) -> Tensor:
    return (q.probs * (q.logits - p.logits)).sum(-1)
