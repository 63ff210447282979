"""Batched matrix algebra with the sample dimensions folded into the right-hand side.

A family with batch shape ``B`` and ``K`` particles holds one matrix per batch
element.  ``torch.matmul(L, eps[..., None])`` would broadcast ``L`` to
``[K, *B, D, D]`` and copy it.  Here every dimension along which the matrix is
*shared* (the sample dimensions, and batch dimensions where the matrix has size 1)
is folded into the columns of one right-hand side per *distinct* matrix, so the
matrix is never copied and ``K`` matrix-vector products become one matrix-matrix
product (a single GEMM when the matrix is shared by everything).

The right-hand side may also carry batch dimensions that broadcast against the
matrix's (a value of shape ``[2, 3, D]`` against a matrix of shape
``[2, 1, D, D]``), as ``torch.distributions`` allows in ``log_prob``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _apply(op: Callable[[Tensor, Tensor], Tensor], m: Tensor, x: Tensor) -> Tensor:
    """``op(m, columns)`` for ``m [*Bm, D, E]`` and ``x [*Bx, E]``, returning ``[*broadcast(Bx, Bm), D]``.

    ``op`` maps ``([N, D, E], [N, E, C]) -> [N, D, C]`` (a product or a solve).
    """
    e = x.shape[-1]
    full = torch.broadcast_shapes(x.shape[:-1], m.shape[:-2])
    # A dimension along which ``m`` was expanded (stride 0) holds one matrix; treat it
    # as size 1 (once ``full`` has it) so that reshaping ``m`` never materializes copies.
    for i in range(m.dim() - 2):
        if m.shape[i] > 1 and m.stride(i) == 0:
            m = m.narrow(i, 0, 1)
    n = len(full)
    m_batch = (1,) * (n - (m.dim() - 2)) + tuple(m.shape[:-2])
    # Dimensions where the matrix varies stay batch dimensions of the product; the
    # rest (where it is shared) become columns.
    kept = [i for i in range(n) if m_batch[i] != 1]
    folded = [i for i in range(n) if m_batch[i] == 1]
    # Lists, not generator expressions: torch.compile traces lists but not generators.
    n_kept = math.prod([full[i] for i in kept])
    n_folded = math.prod([full[i] for i in folded])
    x = x.expand(*full, e).permute(*kept, n, *folded).reshape(n_kept, e, n_folded)
    y = op(m.reshape(n_kept, *m.shape[-2:]), x)  # [n_kept, D, n_folded]
    d = y.shape[1]
    y = y.reshape(*[full[i] for i in kept], d, *[full[i] for i in folded])
    # Undo the permutation: position j of ``order`` holds the source dimension of output dimension j.
    order = kept + [n] + folded
    inverse = [order.index(j) for j in range(n + 1)]
    return y.permute(*inverse)


def matvec(m: Tensor, x: Tensor) -> Tensor:
    """``m x`` for ``m [*Bm, D, E]`` and ``x [*Bx, E]``, returning ``[*broadcast(Bx, Bm), D]``."""
    if m.dim() == 2:  # one shared matrix: a single GEMM over every row
        return x @ m.mT
    return _apply(torch.bmm, m, x)


def _solve_lower(tril: Tensor, cols: Tensor) -> Tensor:
    return torch.linalg.solve_triangular(tril, cols, upper=False)


def tril_solve(tril: Tensor, x: Tensor) -> Tensor:
    """``L^{-1} x`` for lower-triangular ``L [*Bm, D, D]`` and ``x [*Bx, D]``, broadcasting as `matvec`.

    Half precision is solved in float32 (torch has no half triangular solve on the CPU)
    and rounded back; ``x`` takes ``L``'s dtype.
    """
    if tril.dtype in _LOW_PRECISION:
        return _apply(_solve_lower, tril.float(), x.float()).to(tril.dtype)
    return _apply(_solve_lower, tril, x.to(tril.dtype))


def cholesky(m: Tensor) -> Tensor:
    """``torch.linalg.cholesky(m)``, in float32 for half precision (rounded back)."""
    if m.dtype in _LOW_PRECISION:
        return torch.linalg.cholesky(m.float()).to(m.dtype)
    return torch.linalg.cholesky(m)
