"""Triton kernels for the diagonal-Gaussian ``rsample_and_log_prob`` (see ``reference.py``).

Forward: each program owns a tile of particle rows ``(k, b)``, reads ``loc`` and
``scale`` (``[B, D]``, shared by the ``K`` particles, so they stay in cache),
draws ``eps`` in registers from Philox keyed by a seed taken from torch's
generator, and writes only ``z [K, B, D]`` and ``log_q [K, B]``.

Backward: each program owns a block of parameter entries ``(b, d)`` and loops
over the ``K`` particles, regenerating ``eps`` from the seed instead of reading
a stored copy; with ``g_z`` and ``g_l`` the upstream gradients,

    dloc   = sum_k g_z                       (+ sum_k -g_l eps / scale   if stopped)
    dscale = sum_k g_z eps - g_l / scale     (or sum_k g_z eps - g_l eps^2 / scale   if stopped).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tl import LOG_2PI, block


@triton.jit(do_not_specialize=["seed"])
def _forward(loc_ptr, scale_ptr, z_ptr, logq_ptr, seed, R, B, D, BR: tl.constexpr, BD: tl.constexpr):
    rows = tl.program_id(0) * BR + tl.arange(0, BR)
    row_ok = rows < R
    b = rows % B
    acc = tl.zeros([BR], tl.float32)
    for d0 in range(0, D, BD):
        cols = d0 + tl.arange(0, BD)
        mask = row_ok[:, None] & (cols < D)[None, :]
        p_off = b[:, None] * D + cols[None, :]
        loc = tl.load(loc_ptr + p_off, mask=mask, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + p_off, mask=mask, other=1.0).to(tl.float32)
        z_off = rows.to(tl.int64)[:, None] * D + cols[None, :]
        eps = tl.randn(seed, z_off)
        tl.store(z_ptr + z_off, (loc + scale * eps).to(z_ptr.dtype.element_ty), mask=mask)
        acc += tl.sum(tl.where(mask, 0.5 * eps * eps + tl.log(scale), 0.0), 1)
    log_q = -acc - 0.5 * LOG_2PI * D
    tl.store(logq_ptr + rows, log_q.to(logq_ptr.dtype.element_ty), mask=row_ok)


@triton.jit(do_not_specialize=["seed"])
def _backward(
    scale_ptr, gz_ptr, gl_ptr, dloc_ptr, dscale_ptr, seed, K, B, D,
    HAS_GZ: tl.constexpr, HAS_GL: tl.constexpr, STOP: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    j = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat index b * D + d
    n = B * D
    ok = j < n
    b = j // D
    scale = tl.load(scale_ptr + j, mask=ok, other=1.0).to(tl.float32)
    inv = 1.0 / scale
    dloc = tl.zeros([BLOCK], tl.float32)
    dscale = tl.zeros([BLOCK], tl.float32)
    for k in range(K):
        # tl.cast, not .to: a size of 1 arrives as a specialized constant, not a tensor.
        idx = tl.cast(k, tl.int64) * tl.cast(n, tl.int64) + j
        eps = tl.randn(seed, idx)
        if HAS_GZ:
            gz = tl.load(gz_ptr + idx, mask=ok, other=0.0).to(tl.float32)
            dloc += gz
            dscale += gz * eps
        if HAS_GL:
            gl = tl.load(gl_ptr + k * B + b, mask=ok, other=0.0).to(tl.float32)
            if STOP:
                dloc -= gl * eps * inv
                dscale -= gl * eps * eps * inv
            else:
                dscale -= gl * inv
    tl.store(dloc_ptr + j, dloc.to(dloc_ptr.dtype.element_ty), mask=ok)
    tl.store(dscale_ptr + j, dscale.to(dscale_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["seed"])
def _noise(eps_ptr, seed, N, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(eps_ptr + idx, tl.randn(seed, idx), mask=idx < N)


def _tiles(D: int) -> tuple[int, int]:
    bd = block(D, 16, 256)
    return max(1, 2048 // bd), bd


def forward(loc: Tensor, scale: Tensor, K: int, seed: int) -> tuple[Tensor, Tensor]:
    """``z [K, B, D]``, ``log_q [K, B]`` from contiguous ``loc, scale [B, D]``."""
    B, D = loc.shape
    z = torch.empty((K, B, D), dtype=loc.dtype, device=loc.device)
    log_q = torch.empty((K, B), dtype=loc.dtype, device=loc.device)
    br, bd = _tiles(D)
    _forward[(triton.cdiv(K * B, br),)](loc, scale, z, log_q, seed, K * B, B, D, BR=br, BD=bd)
    return z, log_q


def noise(seed: int, K: int, B: int, D: int, device: torch.device) -> Tensor:
    """The float32 noise ``eps [K, B, D]`` the kernels use for ``seed`` (for tests and the docs)."""
    eps = torch.empty((K, B, D), dtype=torch.float32, device=device)
    _noise[(triton.cdiv(eps.numel(), 1024),)](eps, seed, eps.numel(), BLOCK=1024)
    return eps


class DiagNormalRsample(torch.autograd.Function):
    """``(z, log_q)`` with the fused forward and a backward that regenerates the noise."""

    @staticmethod
    def forward(ctx, loc: Tensor, scale: Tensor, K: int, seed: int, stop: bool):
        z, log_q = forward(loc, scale, K, seed)
        ctx.save_for_backward(scale)
        ctx.K, ctx.seed, ctx.stop = K, seed, stop
        ctx.set_materialize_grads(False)
        return z, log_q

    @staticmethod
    def backward(ctx, g_z: Tensor | None, g_l: Tensor | None):
        (scale,) = ctx.saved_tensors
        if g_z is None and g_l is None:
            return None, None, None, None, None
        B, D = scale.shape
        dloc = torch.empty_like(scale)
        dscale = torch.empty_like(scale)
        gz = g_z.contiguous() if g_z is not None else scale  # a placeholder pointer, never read
        gl = g_l.contiguous() if g_l is not None else scale
        bl = 256
        _backward[(triton.cdiv(B * D, bl),)](
            scale, gz, gl, dloc, dscale, ctx.seed, ctx.K, B, D,
            HAS_GZ=g_z is not None, HAS_GL=g_l is not None, STOP=ctx.stop, BLOCK=bl,
        )  # fmt: skip
        return dloc, dscale, None, None, None
