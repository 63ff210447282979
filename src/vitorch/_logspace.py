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
Half-precision inputs are reduced in float32, whose exponent range weights need, and
the result is cast back saturating: the floor becomes the dtype's lowest finite value
(``-65504`` in float16), so half-precision losses stay finite too, and
`finite_bound` tells that value from an honest bound.
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


def finite_mean(x: Tensor) -> Tensor:
    """Mean of ``x`` with its non-finite entries counted as zero, value and gradient.

    The carrier of a surrogate's gradient: a datum whose bound is ``-inf`` keeps its
    honest value elsewhere but must not turn the carrier into ``inf - inf = NaN``."""
    return torch.where(torch.isfinite(x.detach()), x, 0.0).mean()


def finite_bound(v: Tensor) -> Tensor:
    """Where a bound value is an honest number, not the clamp's floor/ceiling (nor NaN).

    In half precision the floor is the saturated ``-finfo.max``, which no honest bound reaches.
    """
    limit = min(0.1 * LOG_WEIGHT_LIMIT, torch.finfo(v.dtype).max) if v.is_floating_point() else 0.1 * LOG_WEIGHT_LIMIT
    return v.abs() < limit


def _saturate(out: Tensor, dtype: torch.dtype) -> Tensor:
    """``out`` (float32) in ``dtype``, values beyond its range set to its largest finite ones, not inf."""
    if out.dtype == dtype:
        return out
    info = torch.finfo(dtype)
    return out.clamp(info.min, info.max).to(dtype)


def logsumexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log sum exp(x)`` along ``dim`` on clamped inputs: finite values, no NaN gradients."""
    return _saturate(torch.logsumexp(clamp(x), dim), x.dtype)


def logmeanexp(x: Tensor, dim: int = 0) -> Tensor:
    """``log mean exp(x)`` along ``dim`` (see `logsumexp`)."""
    return logsumexp(x, dim) - math.log(x.shape[dim])


def power_logmeanexp(x: Tensor, t: float, dim: int = 0) -> Tensor:
    """``(1 / t) log mean exp(t x)`` along ``dim``: the Rényi and χ bounds' reduction.

    The same as ``logmeanexp(t * x, dim) / t``, but a half-precision input is scaled,
    reduced and divided in float32 and saturated once at the end, so the floor of a
    datum with no possible particle stays finite for every ``t`` (dividing the
    saturated ``-65504`` by ``t < 1`` would overflow to ``-inf``).
    """
    xs = x.float() if x.dtype in _LOW_PRECISION else x
    out = (torch.logsumexp(clamp(t * xs), dim) - math.log(x.shape[dim])) / t
    return _saturate(out, x.dtype)


def mean(x: Tensor, dim: int = 0) -> Tensor:
    """Mean of clamped log-weights (the ELBO's reduction)."""
    return _saturate(clamp(x).mean(dim), x.dtype)


def softmax(x: Tensor, dim: int = 0) -> Tensor:
    """Normalized weights ``exp(x) / sum exp(x)`` of clamped inputs, without gradient;
    exactly the gradient of `logsumexp`."""
    with torch.no_grad():
        # Replaced (infinite) entries have zero gradient in the bound, so zero weight here too.
        w = torch.softmax(clamp(x), dim).masked_fill_(~in_range(x), 0.0)
        return w.to(x.dtype)


def masked(x: Tensor, keep: Tensor) -> Tensor:
    """``x`` where ``keep``, else 0 (value and gradient): drops particles of zero weight."""
    return torch.where(keep, x, 0.0)


def in_range(x: Tensor) -> Tensor:
    """Where ``x`` is untouched by `clamp` (so the bound's gradient reaches it)."""
    return torch.isfinite(x)


def weight_ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den`` per particle, 0 where ``den`` is zero or subnormal.

    The factor by which a backward hook turns gradients computed with the weights
    ``den`` into gradients with the weights ``num`` (DReG, split objectives).
    """
    # The hook rescales a gradient that autograd computed with the model's weight
    # ``den``.  Where that weight is subnormal (or zero) the gradient has lost its
    # digits or underflowed, and ``num / den`` can overflow to inf (then inf * 0 =
    # NaN): such a particle passes no gradient to the guide.  For an IWAE-type bound
    # its guide weight is as negligible; a split objective whose guide weighs
    # particles the model does not (PIWAE's MIWAE groups) loses them, so very spread
    # log-weights call for float64 there (see vitorch.estimators' module notes).
    return torch.where(den.abs() >= torch.finfo(den.dtype).tiny, num / den, 0.0)
