"""Reference conditional solve of nearest-neighbour blocks, in plain torch ops (autograd throughout).

For each joint block ``[[K, k], [k^T, c]]`` (``[B, k'+1, k'+1]``, the target last) it returns
``b = (K + eps I)^{-1} k`` and ``F = c + eps - k^T b``: the weights and variance of the target given
its neighbours.  This is the specification of `vitorch.kernels.neighbour_solve`.

References:
    Vecchia (JRSS B, 1988); Wu, Pleiss & Cunningham, *Variational Nearest Neighbor Gaussian
    Process* (ICML 2022).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["neighbour_solve", "NotPositiveDefiniteBlocks", "factor"]


class NotPositiveDefiniteBlocks(ValueError):
    """``count`` neighbour blocks have no Cholesky factor.

    References:
        Golub & Van Loan, *Matrix Computations* (4th ed., 2013), sec. 4.2: the Cholesky factor
        exists exactly for positive definite matrices.
    """

    def __init__(self, count: int):
        super().__init__(f"{count} neighbour blocks are not positive definite")
        self.count = count


def factor(joint: Tensor, jitter: float) -> tuple[Tensor, Tensor]:
    """The Cholesky factor ``[B, k', k']`` of each jittered neighbour block and the neighbour column ``[B, k']``.

    Raises:
        NotPositiveDefiniteBlocks: naming how many blocks have no factor.
    """
    kk = joint.shape[-1] - 1
    k_nn = joint[:, :kk, :kk]
    if jitter > 0:
        k_nn = k_nn + jitter * torch.eye(kk, dtype=joint.dtype, device=joint.device)
    l_nn, info = torch.linalg.cholesky_ex(k_nn)
    if bool((info > 0).any()):
        raise NotPositiveDefiniteBlocks(int((info > 0).sum()))
    return l_nn, joint[:, :kk, kk]


def neighbour_solve(joint: Tensor, jitter: float) -> tuple[Tensor, Tensor]:
    """``(b [B, k'], F [B])`` for joint blocks ``joint [B, k'+1, k'+1]`` (see the module notes)."""
    l_nn, k_nt = factor(joint, jitter)
    b = torch.cholesky_solve(k_nt.unsqueeze(-1), l_nn).squeeze(-1)
    kk = b.shape[-1]
    return b, joint[:, kk, kk] + jitter - (k_nt * b).sum(-1)
