"""Amortized heads: small modules that map a context to a Gaussian family.

An amortized posterior is "module(context) -> distribution" (Kingma & Welling,
2014): the encoder's features go through one of these heads, which returns a
fresh family every call.  Scales pass through a softplus plus a floor, which keeps
them positive without the exploding gradients of ``exp`` far from the origin.

Example:
    >>> head = DiagNormalHead(in_features=64, event_size=8, hidden=(128,))
    >>> q = head(features)          # features [B, 64] -> DiagNormal, batch [B], event [8]
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._autocast import full_precision
from .gaussian import DiagNormal, FullRankNormal, LowRankNormal

__all__ = ["DiagNormalHead", "FullRankNormalHead", "LowRankNormalHead"]


def _mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: type[nn.Module]) -> nn.Module:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), activation()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class _Head(nn.Module):
    def __init__(
        self,
        in_features: int,
        event_size: int,
        num_outputs: int,
        hidden: Sequence[int],
        activation: type[nn.Module],
        min_scale: float,
        validate_args: bool | None,
    ):
        super().__init__()
        if in_features < 1 or event_size < 1:
            raise ValueError(f"in_features and event_size must be >= 1; got {in_features} and {event_size}")
        if not min_scale >= 0:
            raise ValueError(f"min_scale must be >= 0; got {min_scale}")
        self.event_size = event_size
        self.min_scale = min_scale
        self.validate_args = validate_args
        self.net = _mlp(in_features, hidden, num_outputs, activation)

    def _positive(self, raw: Tensor) -> Tensor:
        # raw is usually a strided slice of one Linear's output; elementwise kernels and
        # their backward read a contiguous copy in one sweep instead of striding.
        return F.softplus(raw.contiguous()) + self.min_scale


class DiagNormalHead(_Head):
    """``context [*B, in_features] -> DiagNormal`` with batch ``[*B]`` and event ``[event_size]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): amortized Gaussian encoders.
    """

    def __init__(
        self,
        in_features: int,
        event_size: int,
        hidden: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
        min_scale: float = 1e-4,
        validate_args: bool | None = None,
    ):
        super().__init__(in_features, event_size, 2 * event_size, hidden, activation, min_scale, validate_args)

    def forward(self, context: Tensor) -> DiagNormal:
        loc, raw = full_precision(self.net(context)).chunk(2, dim=-1)
        return DiagNormal(loc, self._positive(raw), validate_args=self.validate_args)


class FullRankNormalHead(_Head):
    """``context [*B, in_features] -> FullRankNormal``: a softplus diagonal and a free strict lower triangle.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): amortized Gaussian encoders.
    """

    def __init__(
        self,
        in_features: int,
        event_size: int,
        hidden: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
        min_scale: float = 1e-4,
        validate_args: bool | None = None,
    ):
        n_tril = event_size * (event_size - 1) // 2
        super().__init__(in_features, event_size, 2 * event_size + n_tril, hidden, activation, min_scale, validate_args)
        rows, cols = torch.tril_indices(event_size, event_size, offset=-1)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)

    def forward(self, context: Tensor) -> FullRankNormal:
        d = self.event_size
        out = full_precision(self.net(context))  # autocast: densities in float32
        loc, raw_diag, off = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        tril = out.new_zeros(*out.shape[:-1], d, d)
        tril[..., self._rows, self._cols] = off
        tril = tril + torch.diag_embed(self._positive(raw_diag))
        return FullRankNormal(loc, tril, validate_args=self.validate_args)


class LowRankNormalHead(_Head):
    """``context [*B, in_features] -> LowRankNormal`` with a ``[D, rank]`` factor.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): amortized Gaussian encoders.
    """

    def __init__(
        self,
        in_features: int,
        event_size: int,
        rank: int,
        hidden: Sequence[int] = (),
        activation: type[nn.Module] = nn.ReLU,
        min_scale: float = 1e-4,
        validate_args: bool | None = None,
    ):
        if rank < 1:
            raise ValueError(f"rank must be >= 1; got {rank}")
        super().__init__(in_features, event_size, event_size * (2 + rank), hidden, activation, min_scale, validate_args)
        self.rank = rank

    def forward(self, context: Tensor) -> LowRankNormal:
        d, r = self.event_size, self.rank
        out = full_precision(self.net(context))  # autocast: densities in float32
        loc, raw_diag, factor = out[..., :d], out[..., d : 2 * d], out[..., 2 * d :]
        factor = factor.reshape(*out.shape[:-1], d, r)
        # cov_diag is a variance; the floor is squared to match the scale floor of the other heads.
        return LowRankNormal(loc, factor, self._positive(raw_diag).pow(2), validate_args=self.validate_args)
