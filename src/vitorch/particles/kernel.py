"""The Stein direction of SVGD with an RBF kernel, its median bandwidth, and preconditioning.

For particles ``x_1..x_n`` and the target's score ``s(x) = grad log p(x)``, SVGD moves
every particle along (Liu & Wang, 2016, eq. 8)

    ``phi(x_i) = (1/n) sum_j [ k(x_j, x_i) s(x_j) + grad_{x_j} k(x_j, x_i) ]``,

the steepest direction, in the unit ball of the kernel's RKHS, in which the KL divergence
to ``p`` decreases.  The kernel is ``k(x, y) = exp(-|x - y|^2 / h)`` with the median
heuristic ``h = med^2 / log(n + 1)``, ``med`` the median distance between distinct
particles (Liu & Wang write ``med^2 / log n``; their code, like Pyro, divides by ``log(n + 1)``).

Preconditioning uses the matrix-valued kernel ``K(x, y) = Q^{-1} k_Q(x, y)`` of Wang, Tang,
Bajaj & Liu (2019, sec. 3.3), where ``k_Q`` is the RBF kernel in the metric
``|v|_Q^2 = v^T Q v`` for a fixed positive definite ``Q``.  It equals plain SVGD in the
coordinates ``y = L^T x`` (``Q = L L^T``) mapped back, which is how it is computed here;
``Q`` can be diagonal (a ``[D]`` tensor) or full (``[D, D]``), fixed or recomputed from the
particles at each step (e.g. `mean_hessian`, their "Matrix-SVGD (average)").

References:
    Liu & Wang, *Stein Variational Gradient Descent: A General Purpose Bayesian Inference
    Algorithm* (NeurIPS 2016).
    Wang, Tang, Bajaj & Liu, *Stein Variational Gradient Descent with Matrix-Valued Kernels*
    (NeurIPS 2019).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["svgd_direction", "median_bandwidth", "mean_hessian", "Metric"]


def _sq_dists(x: Tensor) -> Tensor:
    """``[n, n]`` squared distances of the rows of a centred ``x [n, D]`` (one GEMM, clamped at 0)."""
    sq = x.pow(2).sum(-1)
    return (sq[:, None] + sq[None, :] - 2.0 * (x @ x.mT)).clamp_min(0.0)


@functools.lru_cache(maxsize=16)
def _pairs(n: int, device: torch.device) -> Tensor:
    """``[n (n - 1) / 2]`` flat indices of the pairs ``i < j`` of an ``[n, n]`` matrix (cached: called every step)."""
    i, j = torch.triu_indices(n, n, offset=1, device=device)
    return i * n + j


def median_bandwidth(sq_dists: Tensor) -> Tensor:
    """``h = median_{i<j} |x_i - x_j|^2 / log(n + 1)`` from the ``[n, n]`` squared distances.

    Returns ``1`` when there is no pair (``n = 1``) or the median is 0 (most particles
    coincide): the kernel's value between a particle and itself is 1 whatever ``h``, and
    coinciding particles exert no force on each other, so any positive ``h`` will do.

    Returns:
        0-d tensor, ``h > 0``.

    References:
        Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016), sec. 5.
    """
    n = sq_dists.shape[-1]
    if n < 2:
        return sq_dists.new_ones(())
    med = sq_dists.reshape(-1)[_pairs(n, sq_dists.device)].median()
    h = med / math.log(n + 1)
    return torch.where(h > 0, h, torch.ones_like(h))


def svgd_direction(x: Tensor, score: Tensor, bandwidth: float | None = None) -> tuple[Tensor, Tensor]:
    """The SVGD direction ``phi(x_i)`` with the RBF kernel ``exp(-|x - y|^2 / h)``.

    Args:
        x: ``[n, D]`` particles.
        score: ``[n, D]`` ``grad log p`` at the particles.
        bandwidth: ``h``; ``None`` for the median heuristic (`median_bandwidth`).

    Returns:
        (``phi [n, D]``, the bandwidth ``h`` used, 0-d).

    References:
        Liu & Wang, *Stein Variational Gradient Descent* (NeurIPS 2016), eq. 8.
    """
    n = x.shape[0]
    # The direction is translation invariant; centring keeps x * rowsum(K) - K x from cancelling
    # digits when the particles sit far from the origin relative to their spread.
    xc = x - x.mean(0)
    sq = _sq_dists(xc)
    h = median_bandwidth(sq) if bandwidth is None else sq.new_tensor(float(bandwidth))
    k = torch.exp(-sq / h)
    # grad_{x_j} k(x_j, x_i) = (2 / h) (x_i - x_j) k_ij, summed over j.
    repulsion = (2.0 / h) * (xc * k.sum(1, keepdim=True) - k @ xc)
    return (k @ score + repulsion) / n, h


class Metric:
    """A fixed positive definite ``Q`` as a change of coordinates ``y = L^T x`` (``Q = L L^T``).

    Args:
        Q: ``[D]`` positive diagonal of ``Q``, or a ``[D, D]`` symmetric positive definite matrix.
        dim: ``D``.

    ``to_y(x)`` maps particles ``[n, D]`` (rows) to ``y``, ``score_to_y(s)`` the score to
    ``grad_y log p = L^{-1} s``, and ``back(phi_y)`` a direction in ``y`` to
    ``L^{-T} phi_y`` in ``x``; with ``phi_y`` the SVGD direction in ``y``, ``back`` gives
    ``Q^{-1} (1/n) sum_j [k_Q s_j + grad_j k_Q]``, the matrix-kernel direction.

    Raises:
        TypeError: if ``Q`` is not a floating tensor.
        ValueError: if ``Q`` is not ``[D]`` or ``[D, D]``, not finite, a diagonal not
            positive, or a matrix not symmetric positive definite.

    References:
        Wang, Tang, Bajaj & Liu, *Stein Variational Gradient Descent with Matrix-Valued Kernels*
        (NeurIPS 2019), sec. 3.3.
    """

    def __init__(self, Q: Tensor, dim: int):
        if not isinstance(Q, Tensor) or not Q.is_floating_point():
            got = Q.dtype if isinstance(Q, Tensor) else type(Q).__name__
            raise TypeError(f"preconditioner: Q must be a floating tensor [D] or [D, D]; got {got}")
        Q = Q.detach()
        if tuple(Q.shape) not in ((dim,), (dim, dim)):
            raise ValueError(f"preconditioner: Q must be [D] or [D, D] with D = {dim}; got shape {tuple(Q.shape)}")
        if not bool(torch.isfinite(Q).all()):
            raise ValueError("preconditioner: Q holds NaN or infinite values")
        self.diagonal = Q.dim() == 1
        if self.diagonal:
            if not bool((Q > 0).all()):
                raise ValueError("preconditioner: a diagonal Q must be positive")
            self.root = Q.sqrt()
        else:
            if not torch.allclose(Q, Q.mT, rtol=1e-6, atol=1e-8 * float(Q.abs().max())):
                raise ValueError("preconditioner: a matrix Q must be symmetric")
            L, info = torch.linalg.cholesky_ex(Q)
            if int(info) != 0:
                raise ValueError("preconditioner: Q is not positive definite (its Cholesky factorization failed)")
            self.root = L

    def to_y(self, x: Tensor) -> Tensor:
        return x * self.root if self.diagonal else x @ self.root

    def score_to_y(self, s: Tensor) -> Tensor:
        if self.diagonal:
            return s / self.root
        return torch.linalg.solve_triangular(self.root, s.mT, upper=False).mT

    def back(self, phi_y: Tensor) -> Tensor:
        if self.diagonal:
            return phi_y / self.root
        return torch.linalg.solve_triangular(self.root.mT, phi_y.mT, upper=True).mT


def mean_hessian(log_prob: Callable[[Tensor], Tensor], diagonal: bool = False, damping: float = 1e-4):
    """A preconditioner: ``Q = -(1/n) sum_i hess log p(x_i)``, the particles' mean negative Hessian.

    Args:
        log_prob: ``[n, D] -> [n]``, twice differentiable.
        diagonal: keep only the diagonal of ``Q`` (``D`` backward passes either way).
        damping: eigenvalues (or diagonal entries) below ``damping`` times the largest
            magnitude are raised to it, so ``Q`` stays positive definite where ``log p``
            is not concave.

    Returns:
        a callable ``x [n, D] -> Q`` (``[D]`` or ``[D, D]``) to pass as ``preconditioner=``.

    Example:
        >>> svgd = SVGD(model.log_density, x0, lr=0.5, preconditioner=mean_hessian(model.log_density))

    References:
        Wang, Tang, Bajaj & Liu, *Stein Variational Gradient Descent with Matrix-Valued Kernels*
        (NeurIPS 2019), sec. 3.3 ("Matrix-SVGD (average)").
    """
    if not callable(log_prob):
        raise TypeError(f"mean_hessian: log_prob must be callable; got {type(log_prob).__name__}")
    if not (0 < damping < 1):
        raise ValueError(f"mean_hessian: damping must lie in (0, 1); got {damping!r}")

    def hessian_preconditioner(x: Tensor) -> Tensor:
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(log_prob(xr).sum(), xr, create_graph=True)
            # Row d of every particle's Hessian: each particle's log-density depends on its own row only.
            rows = [torch.autograd.grad(g[:, d].sum(), xr, retain_graph=True)[0] for d in range(x.shape[1])]
        H = -torch.stack(rows, 1).mean(0)  # [D, D]
        H = 0.5 * (H + H.mT)
        if diagonal:
            d = H.diagonal()
            return d.clamp_min(damping * d.abs().max().clamp_min(torch.finfo(d.dtype).tiny))
        lam, V = torch.linalg.eigh(H)
        lam = lam.clamp_min(damping * lam.abs().max().clamp_min(torch.finfo(lam.dtype).tiny))
        return (V * lam) @ V.mT

    return hessian_preconditioner
