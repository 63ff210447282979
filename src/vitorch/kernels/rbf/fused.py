"""Fused RBF cross-covariance ``s^2 exp(-|a_i - b_j|^2 / 2)`` with a hand-written backward.

Written out in torch ops (`.reference`) the RBF matrix costs about six
elementwise passes over the ``[M, B]`` result forward and as many backward; a
sparse GP evaluates it on every step, so those passes rival its GEMMs.  Here the
forward is one GEMM into a buffer that already holds ``log s^2 - |a_i|^2 / 2``,
then three in-place passes; the backward is one elementwise product
``P = dK * K`` and two skinny GEMMs, from

    dlog s^2 = sum(P),    da = P b - rowsum(P) a,    db = P^T a - colsum(P) b.

Inputs are already divided by the lengthscales (and centred), so gradients to the
lengthscales and to the inputs follow by ordinary autograd through that division.
The backward is first-order only: for second derivatives force
``backend="reference"``.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["RBFCross", "rbf_cross"]


class RBFCross(torch.autograd.Function):
    """``(a [M, D], b [B, D], log_var []) -> exp(log_var - |a_i - b_j|^2 / 2) [M, B]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), eq. 4.9.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, log_var: Tensor) -> Tensor:
        col = (log_var - 0.5 * a.pow(2).sum(-1)).unsqueeze(-1)  # [M, 1]
        k = torch.addmm(col, a, b.mT)
        k.sub_(0.5 * b.pow(2).sum(-1))
        # squared distances below zero are rounding; the exponent never exceeds log s^2
        k.clamp_max_(log_var).exp_()
        ctx.save_for_backward(a, b, k)
        return k

    @staticmethod
    @once_differentiable  # saved intermediates carry no graph: refuse double backward loudly
    def backward(ctx, d_k: Tensor):
        a, b, k = ctx.saved_tensors
        p = d_k * k
        d_a = torch.addcmul(p @ b, p.sum(-1, keepdim=True), a, value=-1.0) if ctx.needs_input_grad[0] else None
        d_b = torch.addcmul(p.mT @ a, p.sum(0).unsqueeze(-1), b, value=-1.0) if ctx.needs_input_grad[1] else None
        return d_a, d_b, p.sum()


def rbf_cross(a: Tensor, b: Tensor, log_var: Tensor) -> Tensor:
    """The fused backend of `vitorch.kernels.rbf_cross`: ``a [M, D]``, ``b [B, D]``,
    ``log_var []`` -> ``[M, B]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), eq. 4.9.
    """
    return RBFCross.apply(a, b, log_var)
