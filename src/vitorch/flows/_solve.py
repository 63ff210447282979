"""Elementwise monotone root finding with exact implicit gradients.

Planar and Sylvester flows have no closed-form inverse, but each reduces to scalar
equations ``g(v) = v + r tanh(r2 v + t) - s = 0`` with ``1 + r r2 tanh' > 0``, so ``g``
is strictly increasing and its root lies in ``[s - |r|, s + |r|]``.  We find it by
Newton's method kept inside a shrinking bracket (bisection when Newton leaves it),
without a graph; one final Newton step *with* the graph then gives the root's value
plus the implicit-function gradient ``dv = -(dg / g'(v))`` with respect to ``s``,
``r``, ``r2`` and ``t``.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tanh_root"]


def _residual(v: Tensor, r: Tensor, r2: Tensor, t: Tensor, s: Tensor) -> tuple[Tensor, Tensor]:
    h = torch.tanh(r2 * v + t)
    return v + r * h - s, 1 + r * r2 * (1 - h * h)


def tanh_root(r: Tensor, r2: Tensor, t: Tensor, s: Tensor, guess: Tensor | None = None, max_iter: int = 60) -> Tensor:
    """Solve ``v + r tanh(r2 v + t) = s`` elementwise (all arguments broadcast).

    Requires ``r * r2 > -1`` elementwise, which makes the left side strictly increasing.
    ``guess`` (e.g. the value from the forward pass that produced ``s``) only sets the
    starting point: a good one ends the search after one Newton step, a bad one costs
    iterations but never accuracy.

    Returns:
        ``v`` with the broadcast shape, differentiable in every argument by the
        implicit function theorem.
    """
    with torch.no_grad():
        r_, r2_, t_, s_ = (a.detach() for a in (r, r2, t, s))
        lo, hi = torch.broadcast_tensors(s_ - r_.abs(), s_ + r_.abs())
        lo, hi = lo.clone(), hi.clone()
        v = 0.5 * (lo + hi) if guess is None else torch.minimum(torch.maximum(guess.detach(), lo), hi)
        # Round-off in g is about eps * (|v| + |r| + |s|); steps below that are noise.
        tol = 8 * torch.finfo(v.dtype).eps * (1 + v.abs() + r_.abs() + s_.abs())
        for _ in range(max_iter):
            g, dg = _residual(v, r_, r2_, t_, s_)
            lo = torch.where(g < 0, v, lo)
            hi = torch.where(g > 0, v, hi)
            step = g / dg
            newton = v - step
            inside = (newton >= lo) & (newton <= hi)  # equality: a step below one ulp
            v_new = torch.where(inside, newton, 0.5 * (lo + hi))
            done = bool(((v_new - v).abs() <= tol).all())
            v = v_new
            if done:
                break
    # One differentiable Newton step: value unchanged to rounding, gradient implicit.
    g, dg = _residual(v, r, r2, t, s)
    return v - g / dg.detach()
