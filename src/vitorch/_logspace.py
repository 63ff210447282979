"""Log-space reductions that stay finite where the textbook formulas produce NaN.

``torch.logsumexp`` over a row that is entirely ``-inf`` returns ``-inf`` (correct)
but its backward computes ``exp(-inf - (-inf)) = NaN``.  A datum whose every
particle has zero weight is legitimate (a point outside the model's support), so
here such rows keep the value ``-inf`` and receive a zero gradient.  Half-precision
inputs are reduced in float32, whose exponent range the weights need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(x: Tensor) -> Tensor:
    return x.float() if x.dtype in _LOW_PRECISION else x


def _degenerate(xf: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    # all -inf: the sum is 0; any +inf: the sum is inf (a Renyi bound with alpha > 1
    # meets this when one weight is zero).  Both get exact values and zero gradients.
    return torch.isneginf(xf).all(dim, keepdim=True), torch.isposinf(xf).any(dim, keepdim=True)


def logsumexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log sum exp(x)`` along ``dim``; all ``-inf`` slices give ``-inf`` and slices
    holding ``+inf`` give ``+inf``, both with zero gradient instead of NaN."""
    xf = _upcast(x)
    dead, inf = _degenerate(xf, dim)
    out = torch.logsumexp(torch.where(dead | inf, 0.0, xf), dim)
    out = torch.where(dead.squeeze(dim), -math.inf, torch.where(inf.squeeze(dim), math.inf, out))
    return out.to(x.dtype)


def logmeanexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log mean exp(x)`` along ``dim`` (see :func:`logsumexp`)."""
    return logsumexp(x, dim) - math.log(x.shape[dim])


def softmax(x: Tensor, dim: int = 0) -> Tensor:
    """Normalized weights ``exp(x) / sum exp(x)``; degenerate slices (see :func:`logsumexp`)
    give zeros, matching the zero gradient of their log-sum-exp."""
    xf = _upcast(x)
    bad = torch.logical_or(*_degenerate(xf, dim))
    w = torch.softmax(torch.where(bad, 0.0, xf), dim)
    return torch.where(bad, 0.0, w).to(x.dtype)
