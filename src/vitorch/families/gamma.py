"""Gamma families with two kinds of reparameterized gradient.

* `Gamma`: implicit reparameterization (Figurnov et al., 2018),
  ``dz/d alpha = -(dF(z; alpha)/d alpha) / q(z; alpha)``, computed by torch's
  ``_standard_gamma_grad`` and, below ``z = 1e-10`` (and for draws that underflow),
  by its small-``z`` limit in log space (see `implicit_dlogx`).  Draws come
  from torch's sampler for concentrations >= 1 and from the log-space sampler of
  `vitorch.families._rsvi` below one.
* `RSVIGamma`: the Marsaglia-Tsang sampler reparameterized through the
  accepted proposal noise, with shape augmentation and the exact correction term
  of Naesseth et al. (2017) supplied to the estimator by
  `RSVIGamma.rsample_with_correction` (see `vitorch.families._rsvi`).

Both have batch shape ``concentration``'s and ``rate``'s broadcast and event shape
``[]``; ``z = x / rate`` with ``x ~ Gamma(concentration, 1)``.

Underflow: Gamma draws at small concentration are often below the smallest
positive normal number (about half of them at ``concentration = 1e-3`` in
float64, over 90% in float32).  Both families return such draws as that number
(``torch.finfo(dtype).tiny``), never zero, with a zero pathwise gradient; their
``log q`` is the density at the returned value.  `RSVIGamma` works in log
space until this final clamp, so nothing on its path is NaN or infinite.

References:
    Figurnov, Mohamed & Mnih, Implicit Reparameterization Gradients (NeurIPS 2018).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
    Marsaglia & Tsang, A Simple Method for Generating Gamma Variables (ACM Trans. Math. Softw., 2000).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd import Function
from torch.autograd.function import once_differentiable
from torch.distributions import register_kl

from . import _rsvi
from .base import LOW_PRECISION, Family, as_params, broadcast_params, cast_value
from .constraints import positive_finite

__all__ = ["Gamma", "RSVIGamma", "implicit_dlogx", "implicit_log_standard_gamma"]


def clamp_tiny(z: Tensor) -> Tensor:
    """Raise values below the smallest positive normal number to it (zero gradient there)."""
    return z.clamp(min=torch.finfo(z.dtype).tiny)


_SMALL_LOG_X = -23.0  # log(1e-10): below it the small-x limit is exact to ~1e-10 relative


def implicit_dlogx(alpha: Tensor, log_x: Tensor) -> Tensor:
    """``d log x / d alpha`` for a standard Gamma draw ``x`` held at fixed CDF (Figurnov et al., 2018).

    Above ``x = 1e-10`` it is ``-(dF/d alpha) / (x q(x))`` from torch's
    ``_standard_gamma_grad``.  Below, ``F(x; alpha) = x^alpha / Gamma(alpha + 1) (1 + O(x))``
    gives ``(digamma(alpha + 1) - log x) / alpha`` with relative error ``O(x)``, which
    stays finite for draws whose ``x`` underflows (only ``log x`` is needed).
    Shapes broadcast.
    """
    alpha, log_x = torch.broadcast_tensors(alpha, log_x)
    small = log_x < _SMALL_LOG_X
    x = torch.exp(torch.where(small, 0.0, log_x))
    large_x = torch._standard_gamma_grad(alpha.contiguous(), x) / x
    small_x = (torch.digamma(alpha + 1) - log_x) / alpha
    return torch.where(small, small_x, large_x)


def _draw_log_standard_gamma(alpha: Tensor) -> Tensor:
    """``log x``, ``x ~ Gamma(alpha, 1)``, without gradient.

    The sampler is picked per element from ``alpha`` alone, so the law is exact:
    torch's C++ sampler where ``alpha >= 1`` (its draws are far from underflow there),
    the log-space sampler of `vitorch.families._rsvi` below one, where ``x``
    itself may underflow but ``log x`` must not.
    """
    large = alpha >= 1
    if bool(large.all()):
        return torch.log(torch._standard_gamma(alpha))
    small_draw = _rsvi.log_standard_gamma(torch.where(large, 0.5, alpha), 0)[0]
    if not bool(large.any()):
        return small_draw
    return torch.where(large, torch.log(torch._standard_gamma(torch.where(large, alpha, 1.0))), small_draw)


class _ImplicitLogGamma(Function):
    """``log x`` with ``x ~ Gamma(alpha, 1)``: exact draw forward, implicit gradient backward."""

    @staticmethod
    def forward(ctx, alpha):
        log_x = _draw_log_standard_gamma(alpha)
        ctx.save_for_backward(alpha, log_x)
        return log_x

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        alpha, log_x = ctx.saved_tensors
        return grad * implicit_dlogx(alpha, log_x)


def implicit_log_standard_gamma(alpha: Tensor) -> Tensor:
    """``[*shape]`` reparameterized ``log x``, ``x ~ Gamma(alpha, 1)``, with implicit gradients in ``alpha``.

    Half-precision ``alpha`` is drawn and differentiated in float32 (torch has no half
    Gamma sampler on the CPU) and ``log x`` rounded back.
    """
    if alpha.dtype in LOW_PRECISION:
        return _ImplicitLogGamma.apply(alpha.float()).to(alpha.dtype)
    return _ImplicitLogGamma.apply(alpha)


class _GammaBase(Family):
    """Density, moments and parameter handling shared by the two Gamma families."""

    arg_constraints = {"concentration": positive_finite, "rate": positive_finite}
    support = positive_finite  # log_prob(inf) is a bug upstream, as for every family (see .constraints)
    has_rsample = True

    def __init__(self, concentration: Tensor, rate: Tensor, validate_args: bool | None = None):
        concentration, rate = as_params(type(self).__name__, concentration=concentration, rate=rate)
        self.concentration, self.rate = broadcast_params(concentration=concentration, rate=rate)
        self._init_checked(
            self.concentration.shape, torch.Size(), validate_args, concentration=concentration, rate=rate
        )

    def _rebuild(self, concentration: Tensor, rate: Tensor) -> _GammaBase:
        raise NotImplementedError

    def _keep(self, new: _GammaBase) -> _GammaBase:
        new._validate_args = self._validate_args
        return new

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return self._keep(self._rebuild(self.concentration.expand(shape), self.rate.expand(shape)))

    def detach(self):
        return self._keep(self._rebuild(self.concentration.detach(), self.rate.detach()))

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.rate

    @property
    def mode(self) -> Tensor:
        return ((self.concentration - 1) / self.rate).clamp(min=0)

    @property
    def variance(self) -> Tensor:
        return self.concentration / self.rate.pow(2)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(z) = a log b - lgamma(a) + (a - 1) log z - b z``; ``[*sample, *batch]``."""
        if self._validate_args:
            self._validate_sample(value)
        value = cast_value(value, self.concentration.dtype)
        a, b = self.concentration, self.rate
        return torch.xlogy(a, b) - torch.lgamma(a) + torch.xlogy(a - 1, value) - b * value

    def entropy(self) -> Tensor:
        a = self.concentration
        return a - torch.log(self.rate) + torch.lgamma(a) + (1 - a) * torch.digamma(a)

    def cdf(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = cast_value(value, self.concentration.dtype)
        return torch.special.gammainc(self.concentration, self.rate * value)

    def _log_q(self, z: Tensor) -> Tensor:
        # z came from this family and is >= tiny: skip the support check.
        a, b = self.concentration, self.rate
        return torch.xlogy(a, b) - torch.lgamma(a) + (a - 1) * torch.log(z) - b * z


class Gamma(_GammaBase):
    """Gamma with implicit reparameterization gradients (Figurnov et al., 2018).

    Args:
        concentration: ``[*batch]`` shape ``alpha > 0``, finite.
        rate: ``[*batch]`` rate ``beta > 0``, finite; broadcasts with ``concentration``.
        validate_args: check parameters and ``log_prob`` inputs (torch's default when ``None``).

    The gradient of a draw is ``-(dF/d alpha) / q`` at that draw (see
    `implicit_dlogx`), plus ``-z / rate`` for the rate.  Works with every pathwise estimator (``reparam``,
    ``stl``, ``dreg``).

    Example:
        >>> q = Gamma(torch.tensor([0.5, 3.0]), torch.tensor(2.0))
        >>> z, log_q = q.rsample_and_log_prob((10,))   # [10, 2], [10, 2]
    """

    def _rebuild(self, concentration, rate):
        return Gamma(concentration, rate, validate_args=False)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        log_x = implicit_log_standard_gamma(self.concentration.expand(shape))
        return clamp_tiny(torch.exp(log_x - torch.log(self.rate)))

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z = self.rsample(sample_shape)
        return z, self._log_q(z)


class RSVIGamma(_GammaBase):
    """Gamma with rejection-sampling reparameterization gradients (Naesseth et al., 2017).

    ``z = h(eps, alpha + B) prod_{i=1..B} u_i^{1/(alpha+i-1)} / rate`` with ``eps`` the
    accepted Marsaglia-Tsang noise; concentrations below one always use at least one
    boost (Marsaglia-Tsang needs a shape >= 1).

    Args:
        concentration: ``[*batch]`` shape ``alpha > 0``, finite (1e-3 to 1e4 tested).
        rate: ``[*batch]`` rate ``beta > 0``, finite.
        boost: ``B >= 0`` shape augmentations.  More boosts shrink the correction's
            variance; each costs one uniform per draw.
        correction: when ``True`` (default) the family sets ``has_correction`` and
            `vitorch.loss` with ``estimator=reparam`` adds the correction term,
            giving the exact RSVI gradient.  When ``False`` it is a plain
            reparameterized family whose gradient omits the correction: biased,
            slightly at large ``alpha + B`` and noticeably at ``B = 0`` with ``alpha``
            near one; ``stl`` and ``dreg`` accept only this setting.
        validate_args: check parameters and ``log_prob`` inputs.

    Example:
        >>> q = RSVIGamma(torch.tensor(0.3, requires_grad=True), torch.tensor(1.0), boost=1)
        >>> z, log_q, log_corr = q.rsample_with_correction((8,))   # each [8]
    """

    def __init__(
        self,
        concentration: Tensor,
        rate: Tensor,
        boost: int = 0,
        correction: bool = True,
        validate_args: bool | None = None,
    ):
        self.boost = _rsvi.check_boost(boost, "RSVIGamma")
        self.has_correction = bool(correction)
        super().__init__(concentration, rate, validate_args)

    def _rebuild(self, concentration, rate):
        return RSVIGamma(concentration, rate, self.boost, self.has_correction, validate_args=False)

    def rsample_with_correction(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``(z, log q(z), log pi(eps; alpha + B))``, each ``[*sample, *batch]``.

        ``z`` and ``log q`` carry gradients through the accepted noise; ``log_corr``
        is the acceptance density's log at the detached noise, differentiable in the
        concentration (the rate does not enter the sampler, so it has no correction).
        """
        shape = self._extended_shape(sample_shape)
        log_x, log_corr, _ = _rsvi.log_standard_gamma(self.concentration.expand(shape), self.boost)
        z = clamp_tiny(torch.exp(log_x - torch.log(self.rate)))
        return z, self._log_q(z), log_corr

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_with_correction(sample_shape)[0]

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z, log_q, _ = self.rsample_with_correction(sample_shape)
        return z, log_q


def _kl_gamma(q, p) -> Tensor:
    """``KL(Gamma(a1, b1) || Gamma(a2, b2)) = (a1 - a2) digamma(a1) - lgamma(a1) + lgamma(a2)
    + a2 (log b1 - log b2) + a1 (b2 - b1) / b1``, ``[*batch]``."""
    a1, b1, a2, b2 = q.concentration, q.rate, p.concentration, p.rate
    return (
        (a1 - a2) * torch.digamma(a1)
        - torch.lgamma(a1)
        + torch.lgamma(a2)
        + a2 * (torch.log(b1) - torch.log(b2))
        + a1 * (b2 - b1) / b1
    )


# Closed-form KL for every pair with a vitorch Gamma on at least one side (torch's Gamma on the other).
for _q, _p in (
    (_GammaBase, _GammaBase),
    (_GammaBase, torch.distributions.Gamma),
    (torch.distributions.Gamma, _GammaBase),
):
    register_kl(_q, _p)(_kl_gamma)
