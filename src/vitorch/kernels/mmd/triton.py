"""Tiled Triton kernels for the unbiased MMD² (see ``reference.py``).

Gram matrices are never materialized: a program owns a block of ``BI`` rows of
one sample, streams the other sample in blocks of ``BJ``, forms the ``BI x BJ``
squared distances with one ``tl.dot`` (IEEE fp32, not TF32, so the value matches
the reference's ``||x||^2 + ||y||^2 - 2 x.y``), and reduces them at once.

Forward: per-program partial sums of ``k`` (with ``i != j`` for the same-sample
sums), added in torch (a fixed order, so results are deterministic).
Backward: for ``r_ij = ||a_i - b_j||^2``, ``d k / d a_i = 2 f'(r_ij) (a_i - b_j)``, so

    P(A, B)_i = 2 (sum_j f'(r_ij)) a_i - 2 sum_j f'(r_ij) b_j,

the second sum another ``tl.dot``; with ``f' = -exp(-r / 2s^2) / 2s^2`` (RBF) or
``-c / (c + r)^2`` (IMQ), and the gradients are

    d/dx = g (2 P(X, X) / (n (n - 1)) - 2 P(X, Y) / (n m)),
    d/dy = g (2 P(Y, Y) / (m (m - 1)) - 2 P(Y, X) / (n m)).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._tl import block

BI = 32
BJ = 32
MAX_D = 128  # the whole event sits in one tile; wider events go to the reference


@triton.jit
def _tile(a_ptr, b_ptr, scales_ptr, g, i, j0, n, m, D, IMQ: tl.constexpr, EXCL: tl.constexpr,
          NS: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr, DERIV: tl.constexpr):  # fmt: skip
    """The kernel values (or ``f'``, with ``DERIV``) of rows ``i`` of ``a`` against ``b[j0 : j0 + BJ]``."""
    j = j0 + tl.arange(0, BJ)
    d = tl.arange(0, BD)
    a = tl.load(a_ptr + g * n * D + i[:, None] * D + d[None, :], mask=(i < n)[:, None] & (d < D)[None, :], other=0.0)
    b = tl.load(b_ptr + g * m * D + j[:, None] * D + d[None, :], mask=(j < m)[:, None] & (d < D)[None, :], other=0.0)
    a = a.to(tl.float32)
    b = b.to(tl.float32)
    aa = tl.sum(a * a, 1)
    bb = tl.sum(b * b, 1)
    r = tl.maximum(aa[:, None] + bb[None, :] - 2.0 * tl.dot(a, tl.trans(b), input_precision="ieee"), 0.0)
    out = tl.zeros(r.shape, tl.float32)
    for t in range(NS):
        s = tl.load(scales_ptr + t).to(tl.float32)
        if IMQ:
            c = 2.0 * D * s * s
            q = c / (c + r)
            if DERIV:
                out += -q / (c + r)
            else:
                out += q
        else:
            e = tl.exp(-r / (2.0 * s * s))
            if DERIV:
                out += -e / (2.0 * s * s)
            else:
                out += e
    valid = (i < n)[:, None] & (j < m)[None, :]
    if EXCL:
        valid = valid & (i[:, None] != j[None, :])
    return tl.where(valid, out, 0.0), b


@triton.jit
def _pair_sum(a_ptr, b_ptr, scales_ptr, part_ptr, n, m, D, IMQ: tl.constexpr, EXCL: tl.constexpr,
              NS: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    g = tl.program_id(0)
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    acc = tl.zeros([BI], tl.float32)
    for j0 in range(0, m, BJ):
        k, _ = _tile(a_ptr, b_ptr, scales_ptr, g, i, j0, n, m, D, IMQ, EXCL, NS, BJ, BD, False)
        acc += tl.sum(k, 1)
    tl.store(part_ptr + g * tl.num_programs(1) + tl.program_id(1), tl.sum(acc, 0))


@triton.jit
def _pair_grad(a_ptr, b_ptr, scales_ptr, coef_ptr, out_ptr, n, m, D, IMQ: tl.constexpr, EXCL: tl.constexpr,
               NS: tl.constexpr, BI: tl.constexpr, BJ: tl.constexpr, BD: tl.constexpr):  # fmt: skip
    g = tl.program_id(0)
    i = tl.program_id(1) * BI + tl.arange(0, BI)
    d = tl.arange(0, BD)
    mask = (i < n)[:, None] & (d < D)[None, :]
    a = tl.load(a_ptr + g * n * D + i[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    row = tl.zeros([BI], tl.float32)
    cross = tl.zeros([BI, BD], tl.float32)
    for j0 in range(0, m, BJ):
        f1, b = _tile(a_ptr, b_ptr, scales_ptr, g, i, j0, n, m, D, IMQ, EXCL, NS, BJ, BD, True)
        row += tl.sum(f1, 1)
        cross += tl.dot(f1, b, input_precision="ieee")
    coef = tl.load(coef_ptr + g).to(tl.float32)
    grad = coef * 2.0 * (row[:, None] * a - cross)
    tl.store(out_ptr + g * n * D + i[:, None] * D + d[None, :], grad.to(out_ptr.dtype.element_ty), mask=mask)


def _meta(a: Tensor, b: Tensor, imq: bool, excl: bool, ns: int) -> dict:
    return dict(IMQ=imq, EXCL=excl, NS=ns, BI=BI, BJ=BJ, BD=block(a.shape[-1], 16, MAX_D))


def _sum(a: Tensor, b: Tensor, scales: Tensor, imq: bool, excl: bool) -> Tensor:
    G, n, D = a.shape
    grid = (G, triton.cdiv(n, BI))
    part = torch.empty(grid, dtype=torch.float32, device=a.device)
    _pair_sum[grid](a, b, scales, part, n, b.shape[1], D, **_meta(a, b, imq, excl, scales.numel()))
    return part.sum(1)


def _grad(a: Tensor, b: Tensor, scales: Tensor, coef: Tensor, imq: bool, excl: bool) -> Tensor:
    G, n, D = a.shape
    out = torch.empty(a.shape, dtype=torch.float32, device=a.device)
    _pair_grad[(G, triton.cdiv(n, BI))](
        a, b, scales, coef, out, n, b.shape[1], D, **_meta(a, b, imq, excl, scales.numel())
    )
    return out


class MMD(torch.autograd.Function):
    """``[G]`` MMD² of contiguous ``x [G, n, D]``, ``y [G, m, D]``; ``scales`` a float32 tensor."""

    @staticmethod
    def forward(ctx, x: Tensor, y: Tensor, scales: Tensor, imq: bool):
        n, m = x.shape[1], y.shape[1]
        value = _sum(x, x, scales, imq, True) / (n * (n - 1)) + _sum(y, y, scales, imq, True) / (m * (m - 1))
        value = value - 2.0 * _sum(x, y, scales, imq, False) / (n * m)
        ctx.save_for_backward(x, y, scales)
        ctx.imq = imq
        return value.to(x.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        x, y, scales = ctx.saved_tensors
        n, m = x.shape[1], y.shape[1]
        g = g.float().contiguous()
        dx = dy = None
        if ctx.needs_input_grad[0]:
            dx = _grad(x, x, scales, g * (2.0 / (n * (n - 1))), ctx.imq, True)
            dx = (dx + _grad(x, y, scales, g * (-2.0 / (n * m)), ctx.imq, False)).to(x.dtype)
        if ctx.needs_input_grad[1]:
            dy = _grad(y, y, scales, g * (2.0 / (m * (m - 1))), ctx.imq, True)
            dy = (dy + _grad(y, x, scales, g * (-2.0 / (n * m)), ctx.imq, False)).to(y.dtype)
        return dx, dy, None, None
