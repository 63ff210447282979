"""Device functions shared by the Triton kernels (imported only by ``*/triton.py``).

Written with ``tl.exp``/``tl.log`` only, so that they also run under the Triton
interpreter, which has no ``libdevice``.  Each trades at most a few float32 ulps
of *relative* accuracy near zero for that (absolute error stays ~1e-7), well
inside the parity tolerances.
"""

from __future__ import annotations

import triton
import triton.language as tl
from triton.language.random import philox, uint_to_uniform_float

# Globals read inside @triton.jit functions must be constexpr (the compiler refuses plain globals).
LOG_2PI = tl.constexpr(1.8378770664093453)
LOG_WEIGHT_LIMIT = tl.constexpr(1e30)  # vitorch._logspace.LOG_WEIGHT_LIMIT


@triton.jit
def tanh(x):
    # exp of -2|x| never overflows.
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def softplus(x):
    """log(1 + e^x) = max(x, 0) + log(1 + e^{-|x|}), finite for every finite x."""
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def uniforms(seed, idx, stream):
    """Four independent U[0, 1) blocks for element counters ``idx`` (int64) in ``stream`` (int).

    Philox-4x32-10 keyed by ``seed`` with counter ``(idx_lo, idx_hi, stream, 0)``:
    every (element, stream) pair has its own draw, so a backward pass or a later
    rejection round regenerates exactly the numbers it needs.
    """
    lo = idx.to(tl.uint32)
    hi = (idx >> 32).to(tl.uint32)
    zero = lo * 0
    c0, c1, c2, c3 = philox(seed, lo, hi, zero + stream, zero)
    return uint_to_uniform_float(c0), uint_to_uniform_float(c1), uint_to_uniform_float(c2), uint_to_uniform_float(c3)


def block(n: int, lo: int = 16, hi: int = 1024) -> int:
    """A power-of-two block size covering ``n``, clipped to ``[lo, hi]``."""
    return max(lo, min(hi, triton.next_power_of_2(max(int(n), 1))))


@triton.jit
def log1p(x):
    """log(1 + x) to full relative accuracy near 0 (Goldberg's trick: the rounding of 1 + x cancels)."""
    u = 1.0 + x
    return tl.where(u == 1.0, x, tl.log(u) * (x / tl.where(u == 1.0, 1.0, u - 1.0)))
