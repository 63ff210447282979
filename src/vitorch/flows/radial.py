"""Radial flow (Rezende & Mohamed, 2015): ``y = x + beta (x - x0) / (alpha + ||x - x0||)``.

It contracts or expands space around a centre ``x0``.  ``alpha > 0`` and
``beta >= -alpha`` (invertibility) come from softplus reparameterizations.  The
log-determinant is ``(D - 1) log(1 + beta h) + log(1 + beta alpha h^2)`` with
``h = 1 / (alpha + r)``.

Direction: both ways are one cheap ``O(D)`` pass.  The radius of ``x`` solves the
quadratic ``r^2 + (alpha + beta - r') r - alpha r' = 0`` given ``r' = ||y - x0||``, so
the inverse is closed form (the paper leaves it implicit); ``log_prob``,
sticking-the-landing and DReG cost about as much as sampling.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 4.1, appendix A.2.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from .base import ParamNet, Transform

__all__ = ["Radial"]


class Radial(Transform):
    """Radial contraction/expansion around a learned centre.

    Args:
        dim: event size ``D``.
        context_features: ``C``; when positive, ``x0, alpha, beta`` come from a
            hypernetwork of the context.
        hidden: hidden widths of that hypernetwork.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 4.1.
    """

    def __init__(self, dim: int, context_features: int = 0, hidden: Sequence[int] = (64,)):
        super().__init__(dim)
        self.params = ParamNet(dim + 2, context_features, hidden, init_std=0.5)

    def _params(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context)
        x0 = p[..., : self.dim]
        alpha = F.softplus(p[..., self.dim])
        beta = F.softplus(p[..., self.dim + 1]) - alpha
        return x0, alpha, beta

    def _ladj(self, r: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        h = 1 / (alpha + r)
        return (self.dim - 1) * torch.log1p(beta * h) + torch.log1p(beta * alpha * h * h)

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        x0, alpha, beta = self._params(context)
        diff = x - x0
        r = diff.norm(dim=-1)
        y = x + (beta / (alpha + r)).unsqueeze(-1) * diff
        return y, self._ladj(r, alpha, beta)

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        x0, alpha, beta = self._params(context)
        diff = y - x0
        r_out = diff.norm(dim=-1)
        q = alpha + beta - r_out
        root = torch.sqrt(q * q + 4 * alpha * r_out)
        # The positive root of r^2 + q r - alpha r' = 0, in the form free of cancellation.
        r = torch.where(q > 0, 2 * alpha * r_out / (q + root), 0.5 * (root - q))
        x = x0 + diff / (1 + beta / (alpha + r)).unsqueeze(-1)
        return x, -self._ladj(r, alpha, beta)
