"""Fused conditional solve: one ``autograd.Function`` whose backward reuses the stored Cholesky factor.

Autograd through ``cholesky``, two triangular solves and the slicing of the block takes about a
dozen batched passes; here the backward is one more solve against the stored factor, written
into one gradient block: ``dK = (F' b - h) b^T``, ``dk = h - 2 F' b``, ``dc = F'`` with
``h = K^{-1} b'`` (from ``db = K^{-1} (dk - dK b)`` and ``dF = dc - 2 b^T dk + b^T dK b``).

References:
    Wu, Pleiss & Cunningham, *Variational Nearest Neighbor Gaussian Process* (ICML 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .reference import factor

__all__ = ["neighbour_solve"]


class _NeighbourSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, joint: Tensor, jitter: float):
        l_nn, k_nt = factor(joint, jitter)
        b = torch.cholesky_solve(k_nt.unsqueeze(-1), l_nn).squeeze(-1)
        ctx.save_for_backward(l_nn, b)
        kk = b.shape[-1]
        return b, joint[:, kk, kk] + jitter - (k_nt * b).sum(-1)

    @staticmethod
    def backward(ctx, g_b: Tensor, g_f: Tensor):
        l_nn, b = ctx.saved_tensors
        kk = b.shape[-1]
        h = torch.cholesky_solve(g_b.unsqueeze(-1), l_nn).squeeze(-1)
        g_f1 = g_f.unsqueeze(-1)
        grad = b.new_empty(b.shape[0], kk + 1, kk + 1)
        torch.mul((g_f1 * b - h).unsqueeze(-1), b.unsqueeze(-2), out=grad[:, :kk, :kk])
        grad[:, :kk, kk] = h - 2 * g_f1 * b
        grad[:, kk, :kk] = 0.0
        grad[:, kk, kk] = g_f
        return grad, None


def neighbour_solve(joint: Tensor, jitter: float) -> tuple[Tensor, Tensor]:
    """``(b [B, k'], F [B])``, the same as `reference.neighbour_solve`, first-order gradients."""
    return _NeighbourSolve.apply(joint, jitter)
