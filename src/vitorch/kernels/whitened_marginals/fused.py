"""Fused forward and backward for a sparse GP's marginals ``q(f_b)``: the per-step hot spot.

For a batch of ``B`` inputs the bound needs, with ``A = L^{-1} K_mb [M, B]``,

    mean_b = A^T m,        var_b = k_bb + colsum(A * (W A)),

where ``m [M]`` is q's mean and ``W [M, M]`` the symmetric "middle" matrix
(``S - I`` for a whitened q with covariance ``S``).  Left to autograd
(`.reference`) these cost about twelve ``O(M^2 B)`` passes (``W = R R^T - I``
is formed inside, from a square root ``R``).  `WhitenedMarginals` needs four
GEMMs of ``2 M^2 B`` flops: ``A`` and ``W A`` forward; ``dK = L^{-T} dA`` and
``dW = (A diag(dv)) A^T`` backward.  The gradient for ``K_mm`` then follows in
``O(M^3)``, straight through the Cholesky factor, from the symmetry of ``W``:
``dA A^T = 2 W dW + m (A dmean)^T``.

It multiplies by ``L^{-1}`` (one ``O(M^3 / 3)`` triangular inversion of the Cholesky
factor, never of ``K_mm``) because a GEMM runs at a higher rate per flop than a
triangular solve against ``B`` right-hand sides, and the forward error of
multiplying by a computed triangular inverse is of the same order as that of the
solve (Higham, *Accuracy and Stability of Numerical Algorithms*, 2002, ch. 14).
Both backwards are first-order only.

References:
    Murray, Differentiation of the Cholesky decomposition (arXiv:1602.07527, 2016).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

__all__ = ["CholeskyAndInverse", "WhitenedMarginals", "whitened_marginals"]


class CholeskyAndInverse(torch.autograd.Function):
    """``K -> (L, L^{-1})`` with ``L = cholesky(K)``; ``L^{-1}`` carries no gradient.

    ``cholesky`` may add a constant jitter to ``K`` (its derivative in ``K`` is then
    the same).  The backward is the usual ``dK = sym(L^{-T} Phi(L^T dL) L^{-1})``
    (Murray, 2016, eq. 10; ``Phi`` takes the lower triangle and halves the diagonal),
    evaluated with two GEMMs against the inverse already at hand instead of two
    triangular solves.

    References:
        Murray, *Differentiation of the Cholesky decomposition* (arXiv:1602.07527, 2016).
    """

    @staticmethod
    def forward(ctx, k: Tensor, cholesky: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
        tril = cholesky(k)
        eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
        # X L = I as a right-sided solve, which LAPACK runs faster than L X = I
        linv = torch.linalg.solve_triangular(tril, eye, upper=False, left=False)
        ctx.mark_non_differentiable(linv)
        ctx.save_for_backward(tril, linv)
        return tril, linv

    @staticmethod
    @once_differentiable  # saved intermediates carry no graph: refuse double backward loudly
    def backward(ctx, d_tril: Tensor, _d_linv: Tensor):
        tril, linv = ctx.saved_tensors
        phi = (tril.mT @ d_tril).tril()
        phi.diagonal().mul_(0.5)
        d_k = linv.mT @ phi @ linv
        return 0.5 * (d_k + d_k.mT), None


class WhitenedMarginals(torch.autograd.Function):
    """``(K_mm, L^{-1}, K_mb [M, B], m [M], R [M, M]) -> (A^T m [B], colsum(A * W A) [B])``, ``W = R R^T - I``.

    ``L^{-1}`` must be the inverse Cholesky factor of ``K_mm`` (taken as a constant); the
    gradient is returned for ``K_mm`` itself.  With ``dA = -Phi(L^{-1} dK_mm L^{-T}) A``
    (the derivative of the Cholesky factor, Murray 2016), the adjoint is
    ``dK_mm = -sym(L^{-T} Phi(G_A A^T) L^{-1})``: two GEMMs of ``2 M^3`` after
    ``G_A A^T``, where chaining through ``L`` would take four.

    References:
        Murray, *Differentiation of the Cholesky decomposition* (arXiv:1602.07527, 2016).
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    @staticmethod
    def forward(ctx, k_mm: Tensor, linv: Tensor, k_mb: Tensor, m: Tensor, root: Tensor) -> tuple[Tensor, Tensor]:
        w = root @ root.mT
        w.diagonal().sub_(1.0)
        a = linv @ k_mb
        wa = w @ a
        ctx.save_for_backward(linv, a, wa, m, w, root)
        return a.mT @ m, (a * wa).sum(0)

    @staticmethod
    @once_differentiable  # saved intermediates carry no graph: refuse double backward loudly
    def backward(ctx, d_mean: Tensor, d_var: Tensor):
        linv, a, wa, m, w, root = ctx.saved_tensors
        d_w = (a * d_var) @ a.mT  # A diag(dv) A^T, symmetric [M, M]
        d_k = None
        if ctx.needs_input_grad[2]:
            # dK = L^{-T} dA with dA = 2 (W A) diag(dv) + m dmean^T (W symmetric); the rank-one part is added
            # after the product, in place, to save a pass over [M, B]
            d_k = (linv.mT @ (wa * (2.0 * d_var))).addr_(linv.mT @ m, d_mean)
        a_dmean = a @ d_mean
        d_kmm = None
        if ctx.needs_input_grad[0]:
            # G_A A^T = 2 W (A dv A^T) + m (A dmean)^T needs no further O(M^2 B) product
            phi = torch.addr(2.0 * (w @ d_w), m, a_dmean).tril()
            phi.diagonal().mul_(0.5)
            d_kmm = -(linv.mT @ phi @ linv)
            d_kmm = 0.5 * (d_kmm + d_kmm.mT)
        d_root = 2.0 * (d_w @ root) if ctx.needs_input_grad[4] else None  # d(R R^T) with dW symmetric
        return d_kmm, None, d_k, a_dmean, d_root


def whitened_marginals(
    k_mm: Tensor,
    k_mb: Tensor,
    loc: Tensor,
    root: Tensor,
    cholesky: Callable[[Tensor], Tensor] = torch.linalg.cholesky,
    whitened: bool = True,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused backend of `vitorch.kernels.whitened_marginals` (same arguments and results:
    ``k_mm [M, M]``, ``k_mb [M, B]``, ``loc [M]``, ``root [M, M]`` -> ``[B]``, ``[B]``, ``[M, M]``).

    References:
        Murray, *Differentiation of the Cholesky decomposition* (arXiv:1602.07527, 2016).
    """
    tril, linv = CholeskyAndInverse.apply(k_mm, cholesky)
    if not whitened:  # q over u = L v: express it over v, an O(M^3) change of variables
        loc = torch.linalg.solve_triangular(tril, loc.unsqueeze(-1), upper=False).squeeze(-1)
        root = torch.linalg.solve_triangular(tril, root, upper=False)
    mean, var = WhitenedMarginals.apply(k_mm, linv, k_mb, loc, root)
    return mean, var, tril
