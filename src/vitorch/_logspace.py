"""Log-space reductions that stay finite where the textbook formulas produce NaN or inf.

A particle can have zero weight (``log w = -inf``, a point outside the model's
support) and, for a Rényi bound with ``alpha > 1``, a power of a log-weight can be
``+inf``.  ``torch.logsumexp`` over a slice that is entirely ``-inf`` returns
``-inf`` and its backward ``exp(-inf - (-inf)) = NaN``.  Here infinite log-weights
are first replaced by ``-+LOG_WEIGHT_LIMIT`` (``1e30``): a zero weight stays a weight
of exactly zero next to any finite one, a datum whose particles all have zero weight
gets the finite bound ``-1e30`` instead of ``-inf`` (so one impossible datum cannot
make a batch loss infinite), and the replacement's backward (``grad * isfinite(x)``)
gives such particles a zero gradient.  NaN is kept: it propagates, as a bug should.
The replacement is one elementwise op with a two-op backward, which matters for a
bound evaluated every step.
Half-precision inputs are reduced in float32, whose exponent range weights need.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_WEIGHT_LIMIT = 1e30
_LOW_PRECISION = (torch.float16, torch.bfloat16)


def clamp(x: Tensor) -> Tensor:
    """``x`` with ``-+inf`` replaced by ``-+1e30`` (upcast to float32 if half precision); NaN is kept."""
    if x.dtype in _LOW_PRECISION:
        x = x.float()
    return x.nan_to_num(nan=math.nan, posinf=LOG_WEIGHT_LIMIT, neginf=-LOG_WEIGHT_LIMIT)


def finite_bound(v: Tensor) -> Tensor:
    """Where a bound value is an honest number, not the clamp's floor/ceiling (nor NaN)."""
    return v.abs() < 0.1 * LOG_WEIGHT_LIMIT


def logsumexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log sum exp(x)`` along ``dim`` on clamped inputs: finite values, no NaN gradients."""
    out = torch.logsumexp(clamp(x), dim)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def logmeanexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log mean exp(x)`` along ``dim`` (see :func:`logsumexp`)."""
    return logsumexp(x, dim) - math.log(x.shape[dim])


def mean(x: Tensor, dim: int = 0) -> Tensor:
    """Mean of clamped log-weights (the ELBO's reduction)."""
    out = clamp(x).mean(dim)
    return out if out.dtype == x.dtype else out.to(x.dtype)


def softmax(x: Tensor, dim: int = 0) -> Tensor:
    """Normalized weights ``exp(x) / sum exp(x)`` of clamped inputs, without gradient;
    exactly the gradient of :func:`logsumexp`."""
    with torch.no_grad():
        # Replaced (infinite) entries have zero gradient in the bound, so zero weight here too.
        w = torch.softmax(clamp(x), dim).masked_fill_(~in_range(x), 0.0)
        return w.to(x.dtype)


def in_range(x: Tensor) -> Tensor:
    """Where ``x`` is untouched by :func:`clamp` (so the bound's gradient reaches it)."""
    return torch.isfinite(x)
