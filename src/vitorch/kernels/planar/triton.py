"""Triton kernels for a planar-flow stack (see ``reference.py``).

Forward: a program owns ``BN`` rows with the whole event in registers and applies
all ``L`` layers, writing ``y``, ``ladj`` and the ``L`` activations
``h_l = tanh(a_l)`` per row (``[L, N]``, ``1/D`` of one intermediate ``x``).

Backward walks the layers in reverse, rebuilding ``x_l = x_{l+1} - u_l h_l`` from the
saved ``h_l`` (the exact rounding of the forward's addition undone, no ``tanh``
recomputed).  With ``g`` the gradient at ``x_{l+1}``, ``g_l`` the one of ``ladj``,
``t = u^T w`` and ``o = 1 - h^2``:

    dL/dh = g.u - 2 g_l t h / (1 + t o),   dL/da = o dL/dh,   dL/dt = g_l o / (1 + t o),
    du += g h + (dL/dt) w,   dw += (dL/da) x_l + (dL/dt) u,   db += dL/da,   g <- g + (dL/da) w.

Parameter gradients are summed per program into ``[P, L, D]`` partials, then in torch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tl import block, log1p, tanh

MAX_D = 256  # the event lives in registers; wider events go to the reference
_ELEMS = 4096


@triton.jit
def _forward(x_ptr, u_ptr, w_ptr, b_ptr, y_ptr, y32_ptr, ladj_ptr, h_ptr, N, D, L,
             SAVE32: tl.constexpr, BN: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    rows = tl.program_id(0) * BN + tl.arange(0, BN)
    cols = tl.arange(0, BD)
    rmask = rows < N
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(x_ptr + off, mask=mask, other=0.0).to(tl.float32)
    ladj = tl.zeros([BN], tl.float32)
    for l in range(L):
        u = tl.load(u_ptr + l * D + cols, mask=cmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + l * D + cols, mask=cmask, other=0.0).to(tl.float32)
        b = tl.load(b_ptr + l).to(tl.float32)
        h = tanh(tl.sum(x * w[None, :], 1) + b)
        ladj += log1p(tl.sum(u * w, 0) * (1.0 - h * h))
        x += u[None, :] * h[:, None]
        tl.store(h_ptr + l * N + rows, h, mask=rmask)
    tl.store(y_ptr + off, x.to(y_ptr.dtype.element_ty), mask=mask)
    if SAVE32:
        tl.store(y32_ptr + off, x, mask=mask)
    tl.store(ladj_ptr + rows, ladj.to(ladj_ptr.dtype.element_ty), mask=rmask)


@triton.jit
def _backward(y_ptr, u_ptr, w_ptr, h_ptr, gy_ptr, gl_ptr, gx_ptr, du_ptr, dw_ptr, db_ptr, N, D, L,
              BN: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    pid = tl.program_id(0)
    rows = pid * BN + tl.arange(0, BN)
    cols = tl.arange(0, BD)
    rmask = rows < N
    cmask = cols < D
    mask = rmask[:, None] & cmask[None, :]
    off = rows.to(tl.int64)[:, None] * D + cols[None, :]
    x = tl.load(y_ptr + off, mask=mask, other=0.0).to(tl.float32)
    g = tl.load(gy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    gl = tl.load(gl_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
    for li in range(L):
        l = L - 1 - li
        u = tl.load(u_ptr + l * D + cols, mask=cmask, other=0.0).to(tl.float32)
        w = tl.load(w_ptr + l * D + cols, mask=cmask, other=0.0).to(tl.float32)
        h = tl.load(h_ptr + l * N + rows, mask=rmask, other=0.0)
        x = x - u[None, :] * h[:, None]
        t = tl.sum(u * w, 0)
        o = 1.0 - h * h
        den = 1.0 + t * o
        dh = tl.sum(g * u[None, :], 1) - 2.0 * gl * t * h / den
        da = tl.where(rmask, o * dh, 0.0)
        dt = tl.sum(tl.where(rmask, gl * o / den, 0.0), 0)
        du = tl.sum(g * h[:, None], 0) + dt * w
        dw = tl.sum(da[:, None] * x, 0) + dt * u
        part = (pid * L + l) * D + cols
        tl.store(du_ptr + part, du, mask=cmask)
        tl.store(dw_ptr + part, dw, mask=cmask)
        tl.store(db_ptr + pid * L + l, tl.sum(da, 0))
        g += da[:, None] * w[None, :]
    tl.store(gx_ptr + off, g.to(gx_ptr.dtype.element_ty), mask=mask)


def _tiles(N: int, D: int) -> tuple[int, int]:
    bd = block(D, 16, MAX_D)
    return max(1, min(_ELEMS // bd, block(N, 1, 1024))), bd


class PlanarStack(torch.autograd.Function):
    """``(y [N, D], ladj [N])`` for contiguous ``x [N, D]``, ``u, w [L, D]``, ``b [L]``."""

    @staticmethod
    def forward(ctx, x: Tensor, u: Tensor, w: Tensor, b: Tensor):
        N, D = x.shape
        L = u.shape[0]
        y = torch.empty_like(x)
        ladj = torch.empty(N, dtype=x.dtype, device=x.device)
        h = torch.empty((L, N), dtype=torch.float32, device=x.device)
        # Half-precision outputs keep a float32 copy of y: the backward rebuilds every x_l from it,
        # and starting from the rounded y would cost the gradients the bits float32 keeps.
        save32 = x.dtype != torch.float32
        y32 = torch.empty(x.shape, dtype=torch.float32, device=x.device) if save32 else y
        bn, bd = _tiles(N, D)
        _forward[(triton.cdiv(N, bn),)](x, u, w, b, y, y32, ladj, h, N, D, L, SAVE32=save32, BN=bn, BD=bd)
        ctx.save_for_backward(y32, u, w, h)
        ctx.out_dtype = x.dtype
        ctx.set_materialize_grads(True)
        return y, ladj

    @staticmethod
    def backward(ctx, gy: Tensor, gl: Tensor):
        y, u, w, h = ctx.saved_tensors
        N, D = y.shape
        L = u.shape[0]
        bn, bd = _tiles(N, D)
        P = triton.cdiv(N, bn)
        gx = torch.empty(y.shape, dtype=ctx.out_dtype, device=y.device)
        du = torch.empty((P, L, D), dtype=torch.float32, device=y.device)
        dw = torch.empty_like(du)
        db = torch.empty((P, L), dtype=torch.float32, device=y.device)
        _backward[(P,)](y, u, w, h, gy.contiguous(), gl.contiguous(), gx, du, dw, db, N, D, L, BN=bn, BD=bd)
        return gx, du.sum(0).to(u.dtype), dw.sum(0).to(w.dtype), db.sum(0).to(u.dtype)
