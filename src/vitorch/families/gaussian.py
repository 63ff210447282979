"""Gaussian variational families: diagonal, full-rank (Cholesky) and low-rank-plus-diagonal.

All three have event shape ``[D]`` and reparameterize ``z = loc + A eps`` with
``eps ~ N(0, I)`` (Kingma & Welling, 2014; Rezende et al., 2014).  Their
``rsample_and_log_prob`` reads log q from the noise, ``-||eps||^2 / 2 - log|det A|
- D log(2 pi) / 2``, which skips the solve that ``log_prob(z)`` would need (the
low-rank family, whose noise has ``R + D`` dimensions, still evaluates it, on the
exact ``z - loc``).  ``rsample_and_stopped_log_prob`` (what STL and DReG read) does
the same at stopped parameters: its value comes from the noise and its gradient
through ``z`` is the solve's, so an ill-conditioned factor cannot spoil it.

``log_prob(z)`` on a given ``z`` must solve ``A u = z - loc``; where rounding ``z`` to
the working precision moves it by more than 1% of the smallest conditional standard
deviation (an ill-conditioned Cholesky factor, or a low-rank factor that dwarfs the
diagonal) the families warn once that ``log_prob`` is unreliable.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014).
    Rezende, Mohamed & Wierstra, Stochastic Backpropagation and Approximate
    Inference in Deep Generative Models (2014).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import kernels
from ._gaussian_factors import (
    _LOG_2PI,
    FullRankNormal,
    LowRankNormal,
    _event_check,
    _keep_validation,
)
from .base import Family, as_params, broadcast_params, cast_value
from .constraints import (
    finite_real_vector,
    positive_finite_vector,
    real_vector_support,
)

__all__ = ["DiagNormal", "FullRankNormal", "LowRankNormal"]


class DiagNormal(Family):
    """Gaussian with diagonal covariance, ``N(loc, diag(scale^2))``.

    Args:
        loc: ``[*batch, D]`` mean.
        scale: ``[*batch, D]`` standard deviations, positive and finite;
            broadcasts against ``loc``.
        validate_args: check parameters and ``log_prob`` inputs (torch's default
            when ``None``).

    Example:
        >>> q = DiagNormal(torch.zeros(3), torch.ones(3))
        >>> z, log_q = q.rsample_and_log_prob((5,))   # [5, 3], [5]

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014).
        Rezende, Mohamed & Wierstra, *Stochastic Backpropagation and Approximate Inference in Deep
        Generative Models* (ICML 2014).
    """

    arg_constraints = {"loc": finite_real_vector, "scale": positive_finite_vector}
    support = real_vector_support
    has_rsample = True

    def __init__(self, loc: Tensor, scale: Tensor, validate_args: bool | None = None):
        if validate_args is False and isinstance(loc, Tensor) and isinstance(scale, Tensor):
            shape = loc.shape
            if (
                shape == scale.shape
                and shape
                and 0 not in shape
                and loc.dtype == scale.dtype
                and loc.is_floating_point()
            ):
                # An amortized encoder builds one every training step: with nothing to
                # convert, broadcast or check, set torch's Distribution fields directly
                # (what _init_checked would set).
                self.loc, self.scale = loc, scale
                self._batch_shape, self._event_shape, self._validate_args = shape[:-1], shape[-1:], False
                return
        loc, scale = as_params("DiagNormal", loc=loc, scale=scale)
        _event_check("loc", loc, 1, "DiagNormal")
        self.loc, self.scale = broadcast_params(loc=loc, scale=scale)
        self._init_checked(self.loc.shape[:-1], self.loc.shape[-1:], validate_args, loc=loc, scale=scale)

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return _keep_validation(self, DiagNormal(self.loc.expand(shape), self.scale.expand(shape), validate_args=False))

    def detach(self) -> DiagNormal:
        return _keep_validation(self, DiagNormal(self.loc.detach(), self.scale.detach(), validate_args=False))

    @property
    def mean(self) -> Tensor:
        return self.loc

    @property
    def mode(self) -> Tensor:
        return self.loc

    @property
    def variance(self) -> Tensor:
        return self.scale.pow(2)

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @property
    def covariance_matrix(self) -> Tensor:
        return torch.diag_embed(self.variance)

    @property
    def scale_tril(self) -> Tensor:
        return torch.diag_embed(self.scale)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        eps = torch.randn(*sample_shape, *self.loc.shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.scale * eps

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        # log q read from the noise (no division by scale); vitorch.kernels picks the backend
        # (the torch reference unless another is forced).
        return kernels.diag_normal_rsample_and_log_prob(self.loc, self.scale, sample_shape)

    def rsample_and_stopped_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        # The same kernel, with log q at stopped parameters (STL, DReG).
        return kernels.diag_normal_rsample_and_log_prob(self.loc, self.scale, sample_shape, stop_log_q=True)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        value = cast_value(value, self.loc.dtype)
        u = (value - self.loc) / self.scale
        d = self.loc.shape[-1]
        return -0.5 * u.pow(2).sum(-1) - (self.scale.log().sum(-1) + 0.5 * d * _LOG_2PI)

    def entropy(self) -> Tensor:
        d = self.loc.shape[-1]
        return self.scale.log().sum(-1) + 0.5 * d * (1 + _LOG_2PI)
