"""Planar flow (Rezende & Mohamed, 2015): ``y = x + u tanh(w^T x + b)``.

Cost: ``O(D)`` per sample both ways of the fused forward; the log-determinant is
``log|1 + u^T w tanh'(w^T x + b)|`` by the matrix determinant lemma.  Invertibility
needs ``u^T w >= -1``; we enforce it with the paper's reparameterization
``u_hat = u + (m(w^T u) - w^T u) w / ||w||^2``, ``m(a) = -1 + softplus(a)``.

Direction: sampling with ``rsample_and_log_prob`` is one cheap pass.  There is no
closed-form inverse, but ``w^T x`` solves a monotone scalar equation, so the inverse
costs a few Newton steps per layer (`._solve`) and its gradient is exact by the
implicit function theorem.  ``log_prob`` -- and with it sticking-the-landing and
DReG, which need log q at stopped parameters -- therefore works.  On the flow's own
samples `vitorch.Flow` starts each solve at the forward pass's input, so
one Newton step suffices and STL costs about twice the forward pass.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 4.1, appendix A.1.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from ._solve import tanh_root
from .base import ParamNet, Transform

__all__ = ["Planar"]


class Planar(Transform):
    """``y = x + u_hat tanh(w^T x + b)`` on ``R^D``.

    Args:
        dim: event size ``D``.
        context_features: ``C``; when positive, ``u, w, b`` are emitted by a
            hypernetwork of the context ``[*batch, C]`` (amortized flows).
        hidden: hidden widths of that hypernetwork.

    Example:
        >>> t = Planar(2)
        >>> y, ladj = t.call_and_ladj(torch.randn(10, 2))   # [10, 2], [10]

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 4.1.
    """

    def __init__(self, dim: int, context_features: int = 0, hidden: Sequence[int] = (64,)):
        super().__init__(dim)
        self.params = ParamNet(2 * dim + 1, context_features, hidden, init_std=0.5)

    def _uwb(self, context: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        p = self.params(context)
        d = self.dim
        u, w, b = p[..., :d], p[..., d : 2 * d], p[..., 2 * d]
        wu = (w * u).sum(-1, keepdim=True)
        w_sq = (w * w).sum(-1, keepdim=True).clamp_min(torch.finfo(p.dtype).tiny)
        # Move u along w so that u_hat^T w = -1 + softplus(w^T u) > -1 (appendix A.1).
        u_hat = u + (F.softplus(wu) - 1 - wu) * w / w_sq
        return u_hat, w, b

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        u, w, b = self._uwb(context)
        h = torch.tanh((x * w).sum(-1) + b)
        y = x + u * h.unsqueeze(-1)
        uw = (u * w).sum(-1)
        return y, torch.log1p(uw * (1 - h * h))

    accepts_hint = True

    def inverse_and_ladj(self, y, context=None, hint=None):
        """The inverse by a Newton solve; ``hint``, a guess of ``x`` (such as the forward
        pass's input, which `vitorch.Flow` passes), only speeds it up."""
        self._check_input(y, "y")
        u, w, b = self._uwb(context)
        uw = (u * w).sum(-1)
        # w^T y = a + (u^T w) tanh(a + b) with a = w^T x: a monotone equation in a.
        guess = None if hint is None else (hint * w).sum(-1)
        a = tanh_root(uw, torch.ones_like(uw), b, (y * w).sum(-1), guess)
        h = torch.tanh(a + b)
        x = y - u * h.unsqueeze(-1)
        return x, -torch.log1p(uw * (1 - h * h))
