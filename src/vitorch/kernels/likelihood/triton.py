"""Triton kernels for the decoder log-likelihoods (see ``reference.py``).

Every input is viewed as ``[K, B, D]`` through its strides, so data ``x [B, D]``
broadcast over ``K`` particles (stride 0) is read without being copied.  The
forward reads each element once and writes only ``[K, B]``; the backward reads
the same inputs and the upstream ``g [K, B]`` and writes the parameter
gradients, which are the only ``[K, B, D]`` tensors produced:

    d/dlogits = g (x - sigmoid(l));   d/dmean = g (x - m) / s^2;   d/dscale = g ((x - m)^2 / s^2 - 1) / s.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tl import LOG_2PI, block, softplus


@triton.jit
def _terms(x, p, s, GAUSS: tl.constexpr):
    if GAUSS:
        u = (x - p) / s
        t = -0.5 * u * u - tl.log(s) - 0.5 * LOG_2PI
    else:
        t = x * p - softplus(p)
    return t


@triton.jit
def _offsets(ptr_stride0, ptr_stride1, ptr_stride2, k, b, cols):
    return k.to(tl.int64)[:, None] * ptr_stride0 + b.to(tl.int64)[:, None] * ptr_stride1 + cols[None, :] * ptr_stride2


@triton.jit
def _forward(
    x_ptr, p_ptr, s_ptr, out_ptr, R, B, D,
    xs0, xs1, xs2, ps0, ps1, ps2, ss0, ss1, ss2,
    GAUSS: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < R
    k = rows // B
    b = rows % B
    acc = tl.zeros([BR], tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = row_ok[:, None] & (cols < D)[None, :]
        x = tl.load(x_ptr + _offsets(xs0, xs1, xs2, k, b, cols), mask=mask, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + _offsets(ps0, ps1, ps2, k, b, cols), mask=mask, other=0.0).to(tl.float32)
        if GAUSS:
            s = tl.load(s_ptr + _offsets(ss0, ss1, ss2, k, b, cols), mask=mask, other=1.0).to(tl.float32)
        else:
            s = p
        acc += tl.sum(tl.where(mask, _terms(x, p, s, GAUSS), 0.0), 1)
    tl.store(out_ptr + rows, acc.to(out_ptr.dtype.element_ty), mask=row_ok)


@triton.jit
def _backward(
    x_ptr, p_ptr, s_ptr, g_ptr, dp_ptr, ds_ptr, R, B, D,
    xs0, xs1, xs2, ps0, ps1, ps2, ss0, ss1, ss2,
    GAUSS: tl.constexpr, BR: tl.constexpr, BD: tl.constexpr,
):  # fmt: skip
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < R
    k = rows // B
    b = rows % B
    g = tl.load(g_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)[:, None]
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = row_ok[:, None] & (cols < D)[None, :]
        out = rows.to(tl.int64)[:, None] * D + cols[None, :]
        x = tl.load(x_ptr + _offsets(xs0, xs1, xs2, k, b, cols), mask=mask, other=0.0).to(tl.float32)
        p = tl.load(p_ptr + _offsets(ps0, ps1, ps2, k, b, cols), mask=mask, other=0.0).to(tl.float32)
        if GAUSS:
            s = tl.load(s_ptr + _offsets(ss0, ss1, ss2, k, b, cols), mask=mask, other=1.0).to(tl.float32)
            inv = 1.0 / s
            u = (x - p) * inv
            tl.store(dp_ptr + out, (g * u * inv).to(dp_ptr.dtype.element_ty), mask=mask)
            tl.store(ds_ptr + out, (g * (u * u - 1.0) * inv).to(ds_ptr.dtype.element_ty), mask=mask)
        else:
            tl.store(dp_ptr + out, (g * (x - tl.sigmoid(p))).to(dp_ptr.dtype.element_ty), mask=mask)


def _tiles(D: int) -> tuple[int, int]:
    bd = block(D, 16, 256)
    return max(1, 2048 // bd), bd


def _launch(kernel, x: Tensor, p: Tensor, s: Tensor, *extra: Tensor, gauss: bool) -> None:
    K, B, D = p.shape
    br, bd = _tiles(D)
    kernel[(triton.cdiv(K * B, br),)](
        x, p, s, *extra, K * B, B, D, *x.stride(), *p.stride(), *s.stride(), GAUSS=gauss, BR=br, BD=bd
    )


class LogLik(torch.autograd.Function):
    """``[K, B]`` log-likelihood of views ``x, p, s [K, B, D]`` (``s`` unused for Bernoulli).

    Gradients come back ``[K, B, D]``; the caller sums them to each input's own shape.
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, s: Tensor, gauss: bool):
        K, B, _ = p.shape
        out = torch.empty((K, B), dtype=p.dtype, device=p.device)
        _launch(_forward, x, p, s, out, gauss=gauss)
        ctx.save_for_backward(x, p, s)
        ctx.gauss = gauss
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        x, p, s = ctx.saved_tensors
        gauss = ctx.gauss
        dp = torch.empty(p.shape, dtype=p.dtype, device=p.device)
        ds = torch.empty(p.shape, dtype=s.dtype, device=p.device) if gauss else dp
        _launch(_backward, x, p, s, g.contiguous(), dp, ds, gauss=gauss)
        dx = None
        if ctx.needs_input_grad[0]:
            # Data rarely needs a gradient; when it does, it is -dmean (Gaussian) or g * logits (Bernoulli).
            dx = -dp if gauss else g[..., None] * p
        return dx, dp, (ds if gauss else None), None
