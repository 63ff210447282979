"""Reference marginals ``q(f_b)`` of a sparse variational GP, in plain torch ops.

For a batch of ``B`` inputs, with ``K_mm = L L^T`` and ``A = L^{-1} K_mb [M, B]``,
a whitened ``q(v) = N(m, R R^T)`` over ``v = L^{-1} u`` gives

    mean_b = A^T m,        var_b - k_bb = colsum((R^T A)^2) - colsum(A^2),

(the second is ``colsum(A * (W A))`` with ``W = R R^T - I``).  An unwhitened q over
``u`` is first expressed over ``v`` by ``m <- L^{-1} m``, ``R <- L^{-1} R``.  This is
the specification of `vitorch.kernels.whitened_marginals`; autograd
differentiates it through the Cholesky factor and the triangular solves, and twice
if asked.

References:
    Hensman, Fusi & Lawrence, Gaussian Processes for Big Data (UAI 2013);
    Hensman, Matthews & Ghahramani, Scalable Variational Gaussian Process
    Classification (AISTATS 2015), eq. 8-9.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["whitened_marginals"]


def whitened_marginals(
    k_mm: Tensor,
    k_mb: Tensor,
    loc: Tensor,
    root: Tensor,
    cholesky: Callable[[Tensor], Tensor] = torch.linalg.cholesky,
    whitened: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and variance updates of ``q(f_b)`` and the Cholesky factor of ``K_mm``.

    Args:
        k_mm: ``[M, M]`` inducing covariance.
        k_mb: ``[M, B]`` cross-covariance ``k(Z, X_b)``.
        loc: ``[M]`` mean of q.
        root: ``[M, M]`` a square root ``R`` of q's covariance ``R R^T``.
        cholesky: ``[M, M] -> [M, M]`` lower factor of ``k_mm`` (e.g. with jitter).
        whitened: q is over ``v = L^{-1} u`` (True) or over ``u`` (False).

    Returns:
        ``A^T m [B]``, ``colsum(A * ((R R^T - I) A)) [B]`` in whitened coordinates, and ``L [M, M]``.

    References:
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification*
        (AISTATS 2015), eq. 8-9.
    """
    tril = cholesky(k_mm)
    if not whitened:
        loc = torch.linalg.solve_triangular(tril, loc.unsqueeze(-1), upper=False).squeeze(-1)
        root = torch.linalg.solve_triangular(tril, root, upper=False)
    a = torch.linalg.solve_triangular(tril, k_mb, upper=False)
    mean = a.mT @ loc
    var = (root.mT @ a).pow(2).sum(-2) - a.pow(2).sum(-2)
    return mean, var, tril
