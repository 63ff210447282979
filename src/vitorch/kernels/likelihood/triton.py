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


def _views(shape: torch.Size, *tensors: Tensor) -> list[Tensor]:
    """Each tensor expanded to ``shape`` and viewed as ``[K, B, D]`` (stride 0 where broadcast, no copy)."""
    D = shape[-1]
    B = shape[-2] if len(shape) > 1 else 1
    K = shape[:-2].numel()
    return [t.expand(shape).reshape(K, B, D) for t in tensors]


def _reduce(grad: Tensor, shape: torch.Size, like: Tensor) -> Tensor:
    """A float32 ``[K, B, D]`` gradient summed to ``like``'s own (broadcast) shape, rounded once."""
    return grad.reshape(shape).sum_to_size(like.shape).to(like.dtype)


class LogLik(torch.autograd.Function):
    """``[*shape[:-1]]`` log-likelihood of ``x``, ``p`` (logits or mean) and ``s`` (scale; ignored for
    Bernoulli), each broadcasting to ``shape``.

    The backward kernel writes float32 per-element gradients; inputs that were broadcast
    get them summed to their own shape in float32 and rounded once, so half-precision
    gradients of a shared scale do not accumulate half-precision rounding.
    """

    @staticmethod
    def forward(ctx, x: Tensor, p: Tensor, s: Tensor, shape: torch.Size, gauss: bool):
        xv, pv, sv = _views(shape, x, p, s)
        K, B, _ = pv.shape
        out = torch.empty((K, B), dtype=p.dtype, device=p.device)
        _launch(_forward, xv, pv, sv, out, gauss=gauss)
        ctx.save_for_backward(x, p, s)
        ctx.shape, ctx.gauss = shape, gauss
        return out.reshape(shape[:-1])

    @staticmethod
    def backward(ctx, g: Tensor):
        x, p, s = ctx.saved_tensors
        shape, gauss = ctx.shape, ctx.gauss
        xv, pv, sv = _views(shape, x, p, s)
        dp = torch.empty(pv.shape, dtype=torch.float32, device=p.device)
        ds = torch.empty_like(dp) if gauss else dp
        _launch(_backward, xv, pv, sv, g.reshape(pv.shape[:2]).contiguous(), dp, ds, gauss=gauss)
        dx = None
        if ctx.needs_input_grad[0]:
            # Data rarely needs a gradient; when it does, it is -dmean (Gaussian) or g * logits (Bernoulli).
            full = -dp if gauss else g.reshape(pv.shape[:2]).float()[..., None] * pv.float()
            dx = _reduce(full, shape, x)
        ds_out = _reduce(ds, shape, s) if gauss and ctx.needs_input_grad[2] else None
        return dx, _reduce(dp, shape, p), ds_out, None, None
