"""A stack of planar flow layers with the log-determinant accumulated, in torch: the specification.

Layer ``l`` maps ``x -> x + u_l tanh(w_l^T x + b_l)`` with log-determinant
``log(1 + u_l^T w_l (1 - tanh^2(w_l^T x + b_l)))`` (matrix determinant lemma),
the semantics of `vitorch.flows.Planar` given its reparameterized
``u_hat`` (which keeps ``u^T w > -1``; computing it stays with the caller, it
costs ``O(L D)``).  Torch materializes every intermediate ``x`` (``L`` tensors of
``[N, D]``); the kernel keeps them in registers.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015), sec. 4.1.
"""

from __future__ import annotations

import torch
from torch import Tensor


def planar_stack(x: Tensor, u: Tensor, w: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Apply ``L`` planar layers in order.

    Args:
        x: ``[*shape, D]`` inputs.
        u: ``[L, D]`` reparameterized ``u_hat`` of each layer.
        w: ``[L, D]`` normal vectors.
        b: ``[L]`` offsets.

    Returns:
        ``y [*shape, D]`` and ``ladj [*shape]``, the summed log-determinants.
    """
    ladj = torch.zeros(x.shape[:-1], dtype=x.dtype, device=x.device)
    for l in range(u.shape[0]):
        h = torch.tanh((x * w[l]).sum(-1) + b[l])
        ladj = ladj + torch.log1p((u[l] * w[l]).sum(-1) * (1 - h * h))
        x = x + u[l] * h.unsqueeze(-1)
    return x, ladj
