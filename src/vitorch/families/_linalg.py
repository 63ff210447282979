"""Batched triangular algebra with the sample dimensions folded into the right-hand side.

A family with batch shape ``B`` and ``K`` particles holds one matrix per batch
element.  ``torch.matmul(L, eps[..., None])`` would broadcast ``L`` to
``[K, *B, D, D]`` and copy it; folding the particles into the columns of one
right-hand side per batch element keeps a single ``[*B, D, D]`` operand and turns
``K`` matrix-vector products into one matrix-matrix product.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def to_columns(x: Tensor, batch_shape: torch.Size) -> tuple[Tensor, torch.Size]:
    """``x [*S, *B, D] -> [prod(B), D, prod(S)]`` and the sample shape ``S``."""
    d = x.shape[-1]
    nb = len(batch_shape)
    sample_shape = x.shape[: x.dim() - nb - 1]
    x = x.expand(*sample_shape, *batch_shape, d)
    n_s, n_b = math.prod(sample_shape), math.prod(batch_shape)
    return x.reshape(n_s, n_b, d).permute(1, 2, 0), sample_shape


def from_columns(y: Tensor, sample_shape: torch.Size, batch_shape: torch.Size) -> Tensor:
    """Inverse of :func:`to_columns`: ``[prod(B), D', prod(S)] -> [*S, *B, D']``."""
    return y.permute(2, 0, 1).reshape(*sample_shape, *batch_shape, y.shape[1])


def as_batch(m: Tensor, batch_shape: torch.Size) -> Tensor:
    """``m [*B', D, E]`` broadcast to ``[prod(B), D, E]`` (copies only if ``B'`` is partial)."""
    if m.dim() == 2:
        return m.unsqueeze(0)
    return m.expand(*batch_shape, *m.shape[-2:]).reshape(-1, *m.shape[-2:])


def matvec(m: Tensor, x: Tensor, batch_shape: torch.Size) -> Tensor:
    """``m x`` for ``m [*B, D, E]`` and ``x [*S, *B, E]``, returning ``[*S, *B, D]``."""
    if m.dim() == 2:  # one shared matrix: a single GEMM over every row
        return x @ m.mT
    cols, sample_shape = to_columns(x, batch_shape)
    return from_columns(as_batch(m, batch_shape) @ cols, sample_shape, batch_shape)


def tril_solve(tril: Tensor, x: Tensor, batch_shape: torch.Size) -> Tensor:
    """``L^{-1} x`` for lower-triangular ``L [*B, D, D]`` and ``x [*S, *B, D]``."""
    if tril.dim() == 2:
        return torch.linalg.solve_triangular(tril, x.reshape(-1, x.shape[-1]).mT, upper=False).mT.reshape(
            x.shape
        )
    cols, sample_shape = to_columns(x, batch_shape)
    y = torch.linalg.solve_triangular(as_batch(tril, batch_shape), cols, upper=False)
    return from_columns(y, sample_shape, batch_shape)
