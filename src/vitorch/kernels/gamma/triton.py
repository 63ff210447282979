"""Triton kernels for Marsaglia-Tsang Gamma sampling with shape augmentation (see ``reference.py``).

Forward: each element runs its own rejection loop in registers; round ``r``
draws a normal (Box-Muller) and a uniform from Philox stream ``r`` of its
counter, and the block loops until every lane has accepted, so rejected lanes
cost no memory traffic.  The acceptance test and ``log x`` are evaluated in
float64 (``d (v - 1 - log v)`` cancels badly in float32 when ``a`` is large).
The augmentation uniforms come from streams ``2^30 + i``.

Backward: ``d log x / d alpha = 1/d - 3 c eps / (2 d (1 + c eps)) - sum_i log(u_i) / (alpha + i)^2``,
with the uniforms regenerated from the seed rather than stored.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.language.random import pair_uniform_to_normal

from .._tl import uniforms

_AUG_STREAM = 2**30
# Each round accepts with probability >= 0.95 (a >= 1), so a lane still pending after 64 rounds
# has probability < 1e-83; the cap only turns a bad shape into NaN instead of a hung kernel.
MAX_ROUNDS = tl.constexpr(64)
_BLOCK = 256


@triton.jit
def _shape(alpha, B: tl.constexpr, NU: tl.constexpr):
    # NU = max(B, 1): shapes below one always take at least one augmentation.
    nb = tl.where(alpha < 1.0, NU, B).to(tl.float64)
    a = alpha + nb
    d = a - 1.0 / 3.0
    c = 1.0 / tl.sqrt(9.0 * d)
    return nb, d, c


@triton.jit
def _log_u(seed, idx, i: tl.constexpr, AUG: tl.constexpr):
    u, _, _, _ = uniforms(seed, idx, AUG + i)
    return tl.log(1.0 - u.to(tl.float64))


@triton.jit(do_not_specialize=["seed"])
def _forward(alpha_ptr, logx_ptr, eps_ptr, prop_ptr, seed, N, B: tl.constexpr, NU: tl.constexpr,
             AUG: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < N
    alpha = tl.load(alpha_ptr + idx, mask=ok, other=1.0).to(tl.float64)
    nb, d, c = _shape(alpha, B, NU)
    eps = tl.zeros([BLOCK], tl.float64)
    props = tl.zeros([BLOCK], tl.int32)
    # A shape that is not positive (or NaN) never accepts: leave it out and return NaN, never loop forever.
    valid = alpha > 0
    pending = ok & valid
    r = tl.full([], 0, tl.int32)  # a tensor from the start: the compiler wants loop-carried types fixed
    while (tl.max(pending.to(tl.int32), 0) > 0) & (r < MAX_ROUNDS):
        u0, u1, u2, _ = uniforms(seed, idx, r)
        e, _ = pair_uniform_to_normal(u0, u1)
        e = e.to(tl.float64)
        one_plus = 1.0 + c * e
        pos = one_plus > 0
        log_v = 3.0 * tl.log(tl.where(pos, one_plus, 1.0))
        v = one_plus * one_plus * one_plus
        accept = pending & pos & (tl.log(1.0 - u2.to(tl.float64)) < 0.5 * e * e - d * (v - 1.0 - log_v))
        eps = tl.where(accept, e, eps)
        props += pending.to(tl.int32)
        pending = pending & ~accept
        r += 1
    log_x = tl.log(d) + 3.0 * tl.log(1.0 + c * eps)
    for i in tl.static_range(NU):
        log_x += tl.where(i < nb, _log_u(seed, idx, i, AUG) / (alpha + i), 0.0)
    log_x = tl.where(valid & ~pending, log_x, float("nan"))
    tl.store(logx_ptr + idx, log_x.to(logx_ptr.dtype.element_ty), mask=ok)
    tl.store(eps_ptr + idx, eps.to(eps_ptr.dtype.element_ty), mask=ok)
    tl.store(prop_ptr + idx, props, mask=ok)


@triton.jit(do_not_specialize=["seed"])
def _backward(alpha_ptr, eps_ptr, g_ptr, da_ptr, seed, N, B: tl.constexpr, NU: tl.constexpr,
              AUG: tl.constexpr, BLOCK: tl.constexpr):  # fmt: skip
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    ok = idx < N
    alpha = tl.load(alpha_ptr + idx, mask=ok, other=1.0).to(tl.float64)
    eps = tl.load(eps_ptr + idx, mask=ok, other=0.0).to(tl.float64)
    g = tl.load(g_ptr + idx, mask=ok, other=0.0).to(tl.float64)
    nb, d, c = _shape(alpha, B, NU)
    dlog = 1.0 / d - 1.5 * c * eps / (d * (1.0 + c * eps))
    for i in tl.static_range(NU):
        t = alpha + i
        dlog -= tl.where(i < nb, _log_u(seed, idx, i, AUG) / (t * t), 0.0)
    tl.store(da_ptr + idx, (g * dlog).to(da_ptr.dtype.element_ty), mask=ok)


@triton.jit(do_not_specialize=["seed"])
def _aug_noise(out_ptr, seed, N, NU: tl.constexpr, AUG: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    for i in tl.static_range(NU):
        tl.store(out_ptr + i * N + idx, _log_u(seed, idx, i, AUG), mask=idx < N)


def augmentation_log_u(seed: int, N: int, boost: int, device: torch.device) -> Tensor:
    """The float64 ``log u [max(B, 1), N]`` the kernels use for ``seed`` (for tests)."""
    nu = max(boost, 1)
    out = torch.empty((nu, N), dtype=torch.float64, device=device)
    _aug_noise[(triton.cdiv(N, _BLOCK),)](out, seed, N, NU=nu, AUG=_AUG_STREAM, BLOCK=_BLOCK)
    return out


class LogStandardGamma(torch.autograd.Function):
    """``(log_x, eps, proposals)`` for contiguous ``alpha [N]``; only ``log_x`` is differentiable."""

    @staticmethod
    def forward(ctx, alpha: Tensor, boost: int, seed: int):
        N = alpha.numel()
        log_x = torch.empty_like(alpha)
        eps = torch.empty_like(alpha)
        props = torch.empty(N, dtype=torch.int32, device=alpha.device)
        meta = dict(B=boost, NU=max(boost, 1), AUG=_AUG_STREAM, BLOCK=_BLOCK)
        _forward[(triton.cdiv(N, _BLOCK),)](alpha, log_x, eps, props, seed, N, **meta)
        ctx.save_for_backward(alpha, eps)
        ctx.boost, ctx.seed = boost, seed
        ctx.mark_non_differentiable(eps, props)
        return log_x, eps, props

    @staticmethod
    def backward(ctx, g: Tensor, _g_eps, _g_props):
        alpha, eps = ctx.saved_tensors
        N = alpha.numel()
        da = torch.empty_like(alpha)
        meta = dict(B=ctx.boost, NU=max(ctx.boost, 1), AUG=_AUG_STREAM, BLOCK=_BLOCK)
        _backward[(triton.cdiv(N, _BLOCK),)](alpha, eps, g.contiguous(), da, ctx.seed, N, **meta)
        return da, None, None
