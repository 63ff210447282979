"""The conditional solve of nearest-neighbour GP blocks: weights and variance of a point given its neighbours.

Backends: `.reference` (torch ops with autograd, the specification) and `.fused` (one
``torch.autograd.Function`` whose backward reuses the stored Cholesky factor; float32 and
float64).  ``auto`` takes the fused backend for every supported dtype unless ``torch.compile`` is
tracing or a ``torch.func`` transform is active.  There is no Triton backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference
from .reference import NotPositiveDefiniteBlocks

__all__ = ["neighbour_solve", "NotPositiveDefiniteBlocks", "FUSED_DTYPES"]

_NAME = "neighbour_solve"
FUSED_DTYPES = (torch.float32, torch.float64)


def neighbour_solve(joint: Tensor, jitter: float = 0.0, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``b = (K + eps I)^{-1} k`` and ``F = c + eps - k^T b`` for joint blocks ``[[K, k], [k^T, c]]``.

    Args:
        joint: ``[B, k'+1, k'+1]`` covariance blocks, the target last.
        jitter: ``eps >= 0`` added to the neighbour block's diagonal and to ``F``.
        backend: ``"auto"`` (default context), ``"reference"`` or ``"fused"`` (first-order only).

    Returns:
        ``(b [B, k'], F [B])``.

    Raises:
        ValueError: if ``joint`` is not ``[B, n, n]`` with ``n >= 2`` or ``jitter < 0``.
        NotPositiveDefiniteBlocks: (a ``ValueError``) with the number of blocks without a factor.

    References:
        Vecchia (JRSS B, 1988); Wu, Pleiss & Cunningham, *Variational Nearest Neighbor Gaussian
        Process* (ICML 2022).
    """
    if joint.dim() != 3 or joint.shape[-1] != joint.shape[-2] or joint.shape[-1] < 2:
        raise ValueError(f"{_NAME}: joint must be [B, n, n] with n >= 2; got {tuple(joint.shape)}")
    if jitter < 0:
        raise ValueError(f"{_NAME}: jitter must be >= 0; got {jitter}")
    choice = dispatch.choose(_NAME, joint, backend=backend, dtypes=None, fused=FUSED_DTYPES)
    if choice == "fused":
        return fused.neighbour_solve(joint, jitter)
    return reference.neighbour_solve(joint, jitter)
