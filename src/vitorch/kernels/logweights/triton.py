"""Triton kernels for log-sum-exp and normalized weights along ``K`` (see ``reference.py``).

``log_w`` is viewed as ``[K, N]`` (batch flattened) through its strides.  Each
program owns a block of columns and streams over ``K`` with an online maximum,
so a column is read once for the log-sum-exp and twice for the weights (the
second pass writes ``w~`` and ``w~^2`` together).  Clamping to ``+-1e30`` keeps
every running maximum finite, so no ``-inf - (-inf)`` ever appears.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tl import LOG_WEIGHT_LIMIT

_BK = 16
_BN = 64


@triton.jit
def _clamped(ptr, k, cols, sk, sn, K, N):
    mask = (k < K)[:, None] & (cols < N)[None, :]
    x = tl.load(ptr + k.to(tl.int64)[:, None] * sk + cols[None, :] * sn, mask=mask, other=0.0)
    x = tl.where(mask, x.to(tl.float32), -LOG_WEIGHT_LIMIT)
    # NaN must survive the clamp (it is a bug to report), hence propagate_nan.
    x = tl.minimum(tl.maximum(x, -LOG_WEIGHT_LIMIT, propagate_nan=tl.PropagateNan.ALL), LOG_WEIGHT_LIMIT,
                   propagate_nan=tl.PropagateNan.ALL)  # fmt: skip
    return x, mask


@triton.jit
def _max_and_sum(ptr, cols, sk, sn, K, N, BK: tl.constexpr, BN: tl.constexpr):
    """Per column the maximum ``m`` and ``s = sum_k exp(x_k - m)``, in one online pass over ``K``."""
    m = tl.full([BN], -3.0e38, tl.float32)
    s = tl.zeros([BN], tl.float32)
    for k0 in range(0, K, BK):
        x, mask = _clamped(ptr, k0 + tl.arange(0, BK), cols, sk, sn, K, N)
        m_new = tl.maximum(m, tl.max(x, 0), propagate_nan=tl.PropagateNan.ALL)
        s = s * tl.exp(m - m_new) + tl.sum(tl.where(mask, tl.exp(x - m_new[None, :]), 0.0), 0)
        m = m_new
    # Columns past N hold no entries (s = 0); give them a harmless 1.
    return m, tl.where(cols < N, s, 1.0)


@triton.jit
def _lse(x_ptr, out_ptr, K, N, sk, sn, BK: tl.constexpr, BN: tl.constexpr):
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    m, s = _max_and_sum(x_ptr, cols, sk, sn, K, N, BK, BN)
    lse = m + tl.log(s)
    tl.store(out_ptr + cols, lse.to(out_ptr.dtype.element_ty), mask=cols < N)


@triton.jit
def _weights(
    x_ptr, w_ptr, w2_ptr, g_ptr, K, N, sk, sn,
    GRAD: tl.constexpr, BK: tl.constexpr, BN: tl.constexpr,
):  # fmt: skip
    """``w~`` (and ``w~^2``) of each column, or, with ``GRAD``, ``g * w~`` (the log-sum-exp's backward)."""
    cols = tl.program_id(0) * BN + tl.arange(0, BN)
    # w~ = exp(x - m) / s, not exp(x - lse): lse = m + log(s) rounded in float32 carries an absolute
    # error of half an ulp of |lse| (5e-4 at |log w| ~ 1e4) into every weight's exponent.
    m, s = _max_and_sum(x_ptr, cols, sk, sn, K, N, BK, BN)
    if GRAD:
        g = tl.load(g_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)
    for k0 in range(0, K, BK):
        k = k0 + tl.arange(0, BK)
        x, mask = _clamped(x_ptr, k, cols, sk, sn, K, N)
        raw = tl.load(x_ptr + k.to(tl.int64)[:, None] * sk + cols[None, :] * sn, mask=mask, other=0.0)
        # Entries the clamp moved have zero gradient in the bound, hence zero weight.
        w = tl.where(tl.abs(raw.to(tl.float32)) <= LOG_WEIGHT_LIMIT, tl.exp(x - m[None, :]) / s[None, :], 0.0)
        out = k.to(tl.int64)[:, None] * N + cols[None, :]
        if GRAD:
            tl.store(w_ptr + out, (g[None, :] * w).to(w_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(w_ptr + out, w.to(w_ptr.dtype.element_ty), mask=mask)
            tl.store(w2_ptr + out, (w * w).to(w2_ptr.dtype.element_ty), mask=mask)


def _grid(N: int) -> tuple[int]:
    return (triton.cdiv(N, _BN),)


def normalized_weights(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """``(w~, w~^2)`` of a ``[K, N]`` view, both contiguous ``[K, N]`` in ``log_w``'s dtype."""
    K, N = log_w.shape
    w = torch.empty((K, N), dtype=log_w.dtype, device=log_w.device)
    w2 = torch.empty_like(w)
    _weights[_grid(N)](log_w, w, w2, w, K, N, *log_w.stride(), GRAD=False, BK=_BK, BN=_BN)
    return w, w2


class LogSumExp(torch.autograd.Function):
    """``[N]`` clamped log-sum-exp of a ``[K, N]`` view; the backward recomputes ``w~`` in one kernel."""

    @staticmethod
    def forward(ctx, log_w: Tensor):
        K, N = log_w.shape
        out = torch.empty(N, dtype=log_w.dtype, device=log_w.device)
        _lse[_grid(N)](log_w, out, K, N, *log_w.stride(), BK=_BK, BN=_BN)
        ctx.save_for_backward(log_w)
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        (log_w,) = ctx.saved_tensors
        K, N = log_w.shape
        dx = torch.empty((K, N), dtype=log_w.dtype, device=log_w.device)
        _weights[_grid(N)](log_w, dx, dx, g.contiguous(), K, N, *log_w.stride(), GRAD=True, BK=_BK, BN=_BN)
        return dx
