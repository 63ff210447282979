"""Beta families from two Gammas: ``z = x1 / (x1 + x0)``, ``x1 ~ Gamma(a, 1)``, ``x0 ~ Gamma(b, 1)``.

`Beta` uses implicit reparameterization gradients (Figurnov et al., 2018)
of the two Gammas and ``z = sigmoid(log x1 - log x0)``; `RSVIBeta` draws both Gammas by
the boosted Marsaglia-Tsang sampler and forms ``z = sigmoid(log x1 - log x0)`` in log
space, with correction ``log pi(eps1; a + B) + log pi(eps0; b + B)``
(Naesseth et al., 2017).

Event shape ``[]``.  Draws are kept inside ``[tiny, 1 - eps/2]`` (the smallest
positive normal number and the largest number below one of the dtype) so that
``log z`` and ``log(1 - z)`` stay finite; at a clamped bound the pathwise gradient
is zero and ``log q`` is the density at the returned value.

References:
    Figurnov, Mohamed & Mnih, Implicit Reparameterization Gradients (NeurIPS 2018).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import constraints, register_kl

from . import _rsvi
from .base import Family, as_params, broadcast_params, cast_value
from .constraints import positive_finite
from .dirichlet import dirichlet_kl
from .gamma import implicit_log_standard_gamma

__all__ = ["Beta", "RSVIBeta"]


def _clamp_unit(z: Tensor) -> Tensor:
    info = torch.finfo(z.dtype)
    return z.clamp(min=info.tiny, max=1.0 - info.eps / 2)


class _BetaBase(Family):
    """Density, moments and parameter handling shared by the two Beta families."""

    arg_constraints = {"concentration1": positive_finite, "concentration0": positive_finite}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1: Tensor, concentration0: Tensor, validate_args: bool | None = None):
        concentration1, concentration0 = as_params(
            type(self).__name__, concentration1=concentration1, concentration0=concentration0
        )
        self.concentration1, self.concentration0 = broadcast_params(
            concentration1=concentration1, concentration0=concentration0
        )
        self._init_checked(
            self.concentration1.shape,
            torch.Size(),
            validate_args,
            concentration1=concentration1,
            concentration0=concentration0,
        )

    def _rebuild(self, c1: Tensor, c0: Tensor) -> _BetaBase:
        raise NotImplementedError

    def _keep(self, new):
        new._validate_args = self._validate_args
        return new

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape)
        return self._keep(self._rebuild(self.concentration1.expand(shape), self.concentration0.expand(shape)))

    def detach(self):
        return self._keep(self._rebuild(self.concentration1.detach(), self.concentration0.detach()))

    @property
    def mean(self) -> Tensor:
        return self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def variance(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        total = a + b
        return a * b / (total.pow(2) * (total + 1))

    def log_prob(self, value: Tensor) -> Tensor:
        """``log Beta(z; a, b) = lgamma(a + b) - lgamma(a) - lgamma(b) + (a-1) log z + (b-1) log(1-z)``."""
        if self._validate_args:
            self._validate_sample(value)
        return self._log_q(cast_value(value, self.concentration1.dtype))

    def _log_q(self, z: Tensor) -> Tensor:
        a, b = self.concentration1, self.concentration0
        log_norm = torch.lgamma(a + b) - torch.lgamma(a) - torch.lgamma(b)
        return log_norm + torch.xlogy(a - 1, z) + torch.special.xlog1py(b - 1, -z)

    def entropy(self) -> Tensor:
        a, b = self.concentration1, self.concentration0
        total = a + b
        log_b = torch.lgamma(a) + torch.lgamma(b) - torch.lgamma(total)
        return log_b - (a - 1) * torch.digamma(a) - (b - 1) * torch.digamma(b) + (total - 2) * torch.digamma(total)


class Beta(_BetaBase):
    """Beta with implicit reparameterization gradients (Figurnov et al., 2018).

    Args:
        concentration1: ``[*batch]`` ``a > 0`` (the exponent of ``z``), finite.
        concentration0: ``[*batch]`` ``b > 0`` (the exponent of ``1 - z``), finite.
        validate_args: check parameters and ``log_prob`` inputs.
    """

    def _rebuild(self, c1, c0):
        return Beta(c1, c0, validate_args=False)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        shape = self._extended_shape(sample_shape)
        both = torch.stack([self.concentration1.expand(shape), self.concentration0.expand(shape)], -1)
        log_x = implicit_log_standard_gamma(both)
        return _clamp_unit(torch.sigmoid(log_x[..., 0] - log_x[..., 1]))

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z = self.rsample(sample_shape)
        return z, self._log_q(z)


class RSVIBeta(_BetaBase):
    """Beta from two Marsaglia-Tsang Gammas with the RSVI correction (Naesseth et al., 2017).

    Args:
        concentration1: ``[*batch]`` ``a > 0``, finite.
        concentration0: ``[*batch]`` ``b > 0``, finite.
        boost: ``B >= 0`` shape augmentations for each Gamma (at least one where its
            concentration is below one).
        correction: ``True`` (default) sets ``has_correction`` so that
            ``vt.loss(..., estimator=reparam)`` adds the correction of both Gammas;
            ``False`` gives a plain reparameterized family that omits it (biased;
            usable with ``stl`` and ``dreg``).
        validate_args: check parameters and ``log_prob`` inputs.
    """

    def __init__(
        self,
        concentration1: Tensor,
        concentration0: Tensor,
        boost: int = 0,
        correction: bool = True,
        validate_args: bool | None = None,
    ):
        self.boost = _rsvi.check_boost(boost, "RSVIBeta")
        self.has_correction = bool(correction)
        super().__init__(concentration1, concentration0, validate_args)

    def _rebuild(self, c1, c0):
        return RSVIBeta(c1, c0, self.boost, self.has_correction, validate_args=False)

    def rsample_with_correction(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``(z, log q(z), log_corr)``, each ``[*sample, *batch]``."""
        shape = self._extended_shape(sample_shape)
        both = torch.stack([self.concentration1.expand(shape), self.concentration0.expand(shape)], -1)
        log_x, log_corr, _ = _rsvi.log_standard_gamma(both, self.boost)
        z = _clamp_unit(torch.sigmoid(log_x[..., 0] - log_x[..., 1]))
        return z, self._log_q(z), log_corr.sum(-1)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_with_correction(sample_shape)[0]

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z, log_q, _ = self.rsample_with_correction(sample_shape)
        return z, log_q


def _kl_beta(q, p) -> Tensor:
    """``KL(Beta(a1, b1) || Beta(a2, b2))``: the two-component Dirichlet formula."""
    both = lambda d: torch.stack([d.concentration1, d.concentration0], -1)  # noqa: E731
    return dirichlet_kl(both(q), both(p))


for _q, _p in ((_BetaBase, _BetaBase), (_BetaBase, torch.distributions.Beta), (torch.distributions.Beta, _BetaBase)):
    register_kl(_q, _p)(_kl_beta)
