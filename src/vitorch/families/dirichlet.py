"""Dirichlet families: implicit reparameterization and RSVI through normalized Gammas.

``z = x / sum(x)`` with independent ``x_k ~ Gamma(alpha_k, 1)`` is
``Dirichlet(alpha)``.  `Dirichlet` differentiates each Gamma implicitly
(Figurnov et al., 2018, who reparameterize the Dirichlet this way) and normalizes
by ``softmax(log x)``; `RSVIDirichlet` draws each ``x_k`` by the boosted
Marsaglia-Tsang sampler of `vitorch.families._rsvi` and normalizes in log
space, ``z = softmax(log x)``, so that concentrations of 1e-3
neither underflow every component to zero nor divide zero by zero.  Its
correction is the sum over components of ``log pi(eps_k; alpha_k + B)``
(Naesseth et al., 2017).

Event shape is ``[K]`` (the last dimension of ``concentration``).  Components below
the smallest positive normal number are returned as that number (zero pathwise
gradient), as in `vitorch.families.gamma`; the sum then exceeds one by at most
``K`` times that number.

References:
    Figurnov, Mohamed & Mnih, Implicit Reparameterization Gradients (NeurIPS 2018).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import register_kl

from . import _rsvi
from .base import Family, as_params, cast_value
from .constraints import positive_finite_vector, simplex
from .gamma import clamp_tiny, implicit_log_standard_gamma

__all__ = ["Dirichlet", "RSVIDirichlet", "dirichlet_log_prob", "dirichlet_kl"]


def dirichlet_log_prob(concentration: Tensor, value: Tensor) -> Tensor:
    """``log Dir(value; alpha) = lgamma(sum a) - sum lgamma(a) + sum (a - 1) log z``, reducing the last dim."""
    a = concentration
    return torch.lgamma(a.sum(-1)) - torch.lgamma(a).sum(-1) + torch.xlogy(a - 1, value).sum(-1)


class _DirichletBase(Family):
    """Density, moments and parameter handling shared by the two Dirichlet families."""

    arg_constraints = {"concentration": positive_finite_vector}
    support = simplex  # torch's, with a tolerance that follows the dtype (float16 draws pass)
    has_rsample = True

    def __init__(self, concentration: Tensor, validate_args: bool | None = None):
        (concentration,) = as_params(type(self).__name__, concentration=concentration)
        if concentration.dim() < 1:
            raise ValueError(
                f"{type(self).__name__}: concentration must have at least 1 dimension ([*batch, K]); "
                f"got shape {tuple(concentration.shape)}"
            )
        self.concentration = concentration
        self._init_checked(
            concentration.shape[:-1], concentration.shape[-1:], validate_args, concentration=concentration
        )

    def _rebuild(self, concentration: Tensor) -> _DirichletBase:
        raise NotImplementedError

    def _keep(self, new):
        new._validate_args = self._validate_args
        return new

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return self._keep(self._rebuild(self.concentration.expand(shape)))

    def detach(self):
        return self._keep(self._rebuild(self.concentration.detach()))

    @property
    def mean(self) -> Tensor:
        return self.concentration / self.concentration.sum(-1, keepdim=True)

    @property
    def variance(self) -> Tensor:
        a0 = self.concentration.sum(-1, keepdim=True)
        m = self.concentration / a0
        return m * (1 - m) / (a0 + 1)

    def log_prob(self, value: Tensor) -> Tensor:
        """``[*sample, *batch]`` log-density; ``value`` is ``[*sample, *batch, K]`` on the simplex."""
        if self._validate_args:
            self._validate_sample(value)
        return dirichlet_log_prob(self.concentration, cast_value(value, self.concentration.dtype))

    def entropy(self) -> Tensor:
        a = self.concentration
        a0 = a.sum(-1)
        k = a.shape[-1]
        log_b = torch.lgamma(a).sum(-1) - torch.lgamma(a0)
        return log_b + (a0 - k) * torch.digamma(a0) - ((a - 1) * torch.digamma(a)).sum(-1)


class Dirichlet(_DirichletBase):
    """Dirichlet with implicit reparameterization gradients (Figurnov et al., 2018).

    Args:
        concentration: ``[*batch, K]`` positive, finite.
        validate_args: check parameters and ``log_prob`` inputs.

    Works with every pathwise estimator (``reparam``, ``stl``, ``dreg``).

    Example:
        >>> q = Dirichlet(torch.ones(4, 3))
        >>> z, log_q = q.rsample_and_log_prob((5,))   # [5, 4, 3], [5, 4]
    """

    def _rebuild(self, concentration):
        return Dirichlet(concentration, validate_args=False)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        log_x = implicit_log_standard_gamma(self.concentration.expand(self._extended_shape(sample_shape)))
        return clamp_tiny(torch.softmax(log_x, -1))

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z = self.rsample(sample_shape)
        return z, dirichlet_log_prob(self.concentration, z)


class RSVIDirichlet(_DirichletBase):
    """Dirichlet from normalized Marsaglia-Tsang Gammas with the RSVI correction (Naesseth et al., 2017).

    Args:
        concentration: ``[*batch, K]`` positive, finite (1e-3 to 1e4 tested).
        boost: ``B >= 0`` shape augmentations per component; components with
            concentration below one use at least one.
        correction: ``True`` (default) sets ``has_correction`` so that
            ``vt.loss(..., estimator=reparam)`` adds the correction, summed over
            components; ``False`` gives a plain reparameterized family whose
            gradient omits it (biased; usable with ``stl`` and ``dreg``).
        validate_args: check parameters and ``log_prob`` inputs.
    """

    def __init__(
        self, concentration: Tensor, boost: int = 0, correction: bool = True, validate_args: bool | None = None
    ):
        self.boost = _rsvi.check_boost(boost, "RSVIDirichlet")
        self.has_correction = bool(correction)
        super().__init__(concentration, validate_args)

    def _rebuild(self, concentration):
        return RSVIDirichlet(concentration, self.boost, self.has_correction, validate_args=False)

    def rsample_with_correction(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor, Tensor]:
        """Draw ``(z [*sample, *batch, K], log q(z) [*sample, *batch], log_corr [*sample, *batch])``."""
        shape = self._extended_shape(sample_shape)
        log_x, log_corr, _ = _rsvi.log_standard_gamma(self.concentration.expand(shape), self.boost)
        # softmax subtracts the largest log x first: the sum stays one to rounding even in float32.
        z = clamp_tiny(torch.softmax(log_x, -1))
        return z, dirichlet_log_prob(self.concentration, z), log_corr.sum(-1)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_with_correction(sample_shape)[0]

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        z, log_q, _ = self.rsample_with_correction(sample_shape)
        return z, log_q


def dirichlet_kl(a: Tensor, b: Tensor) -> Tensor:
    """``KL(Dir(a) || Dir(b))`` reducing the last dimension:
    ``lgamma(a0) - sum lgamma(a) - lgamma(b0) + sum lgamma(b) + sum (a - b)(digamma(a) - digamma(a0))``."""
    a0, b0 = a.sum(-1), b.sum(-1)
    log_ratio = torch.lgamma(a0) - torch.lgamma(a).sum(-1) - torch.lgamma(b0) + torch.lgamma(b).sum(-1)
    return log_ratio + ((a - b) * (torch.digamma(a) - torch.digamma(a0).unsqueeze(-1))).sum(-1)


def _kl_dirichlet(q, p) -> Tensor:
    return dirichlet_kl(q.concentration, p.concentration)


for _q, _p in (
    (_DirichletBase, _DirichletBase),
    (_DirichletBase, torch.distributions.Dirichlet),
    (torch.distributions.Dirichlet, _DirichletBase),
):
    register_kl(_q, _p)(_kl_dirichlet)
