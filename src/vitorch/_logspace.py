"""Log-space reductions that stay finite where the textbook formulas produce NaN.

``torch.logsumexp`` over a slice that is entirely ``-inf`` returns ``-inf`` (correct)
but its backward computes ``exp(-inf - (-inf)) = NaN``; likewise a slice holding
``+inf`` (a Rényi bound with ``alpha > 1`` meets one when a weight is zero).  A
datum whose every particle has zero weight is legitimate (a point outside the
model's support), so here such slices keep their exact value and receive a zero
gradient.  The forward pass is one ``torch.logsumexp``; only the backward differs.
Half-precision inputs are reduced in float32, whose exponent range weights need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _degenerate(x: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """The slice maxima and where they are not finite (all ``-inf``, or any ``+inf``)."""
    m = x.detach().amax(dim, keepdim=True)
    return m, torch.isfinite(m).logical_not_()


def logsumexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log sum exp(x)`` along ``dim``; degenerate slices (all ``-inf``, or holding
    ``+inf``) keep their value and get a zero gradient instead of NaN."""
    xf = x.float() if x.dtype in _LOW_PRECISION else x
    m, bad = _degenerate(xf, dim)
    # Degenerate slices are swapped for zeros inside the reduction, so its backward
    # never sees inf - inf; the outer where restores their exact value.
    out = torch.where(bad, m, torch.logsumexp(torch.where(bad, 0.0, xf), dim, keepdim=True))
    return out.squeeze(dim).to(x.dtype)


def logmeanexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log mean exp(x)`` along ``dim`` (see :func:`logsumexp`)."""
    return logsumexp(x, dim) - math.log(x.shape[dim])


def softmax(x: Tensor, dim: int = 0) -> Tensor:
    """Normalized weights ``exp(x) / sum exp(x)`` (no gradient); degenerate slices give
    zeros, matching the zero gradient of their log-sum-exp."""
    with torch.no_grad():
        xf = x.float() if x.dtype in _LOW_PRECISION else x
        _, bad = _degenerate(xf, dim)
        w = torch.softmax(torch.where(bad, 0.0, xf), dim)
        return w.masked_fill_(bad, 0.0).to(x.dtype)
