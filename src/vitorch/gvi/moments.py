"""Gaussian expectations of a potential and its derivatives, the inputs of `FBGVI`.

Forward-backward Gaussian VI needs, at the current Gaussian ``q = N(m, Sigma)``, the
energy ``E_q[V]``, the mean gradient ``E_q[grad V]`` and the mean Hessian
``E_q[hess V]`` of the potential ``V = -log pi``.  Each provider here is a callable
``q -> Moments`` built from a ``log_prob`` ``[n, D] -> [n]``:

* `stein_moments`: Monte Carlo with gradients only.  The Hessian comes from Stein's
  lemma (the Bonnet-Price identity), ``E_q[hess V] = Sigma^{-1} E_q[(X - m) grad V(X)^T]
  = L^{-T} E[eps grad V(m + L eps)^T]``, over antithetic pairs ``+-eps``, which makes
  each pair a central difference of the gradient along ``eps``.
* `hessian_moments`: Monte Carlo with exact Hessians at each draw, by ``D`` autograd
  Hessian-vector products (what Diao et al. analyse with one draw per step).
* `quadrature_moments`: tensor-product Gauss-Hermite quadrature with Stein's lemma for
  the Hessian; deterministic and accurate for smooth potentials in a few dimensions.
* `gaussian_moments`: the closed form for a Gaussian target, which makes FB-GVI a
  deterministic iteration whose fixed point is the target itself.

References:
    Diao, Balasubramanian, Chewi & Salim, *Forward-backward Gaussian variational
    inference via JKO in the Bures-Wasserstein space* (ICML 2023).
    Stein, *Estimation of the Mean of a Multivariate Normal Distribution* (Ann. Stat. 1981);
    Price, *A useful theorem for nonlinear devices having Gaussian inputs* (IRE Trans. 1958);
    Golub & Welsch, *Calculation of Gauss Quadrature Rules* (Math. Comp. 1969).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..families import FullRankNormal

__all__ = ["Moments", "stein_moments", "hessian_moments", "quadrature_moments", "gaussian_moments"]

_LOG_2PI = math.log(2 * math.pi)


class Moments(NamedTuple):
    """Expectations under ``q = N(m, Sigma)`` of the potential ``V = -log pi``.

    Attributes:
        energy: ``[]`` ``E_q[V]`` (with ``log_prob`` unnormalized, up to ``log Z``).
        grad: ``[D]`` ``E_q[grad V]``.
        hessian: ``[D, D]`` ``E_q[hess V]``, symmetric.

    References:
        Diao, Balasubramanian, Chewi & Salim (ICML 2023): the moments FB-GVI's step reads.
    """

    energy: Tensor
    grad: Tensor
    hessian: Tensor


def _check_log_prob(log_prob, who: str) -> None:
    if not callable(log_prob):
        raise TypeError(f"{who}: log_prob must be callable [n, D] -> [n]; got {type(log_prob).__name__}")


def _check_count(value, name: str, who: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{who}: {name} must be a positive integer; got {value!r}")
    return value


def _potential_and_grad(log_prob: Callable[[Tensor], Tensor], x: Tensor, create_graph: bool = False):
    """``V(x) [n]`` and ``grad V(x) [n, D]`` for ``x [n, D]``, by one backward pass."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        log_p = log_prob(x)
        if not isinstance(log_p, Tensor) or log_p.shape != x.shape[:-1]:
            got = tuple(log_p.shape) if isinstance(log_p, Tensor) else type(log_p).__name__
            raise ValueError(f"log_prob must map [n, D] = {tuple(x.shape)} to [n]; got {got}")
        (grad,) = torch.autograd.grad(-log_p.sum(), x, create_graph=create_graph)
    return -log_p.detach(), grad, x


def _stein_hessian(eps: Tensor, grad: Tensor, weights: Tensor, tril: Tensor) -> Tensor:
    """``L^{-T} sum_i w_i eps_i grad_i^T``, symmetrized: Stein's lemma with ``X - m = L eps``."""
    cross = (eps * weights[:, None]).mT @ grad  # [D, D]
    h = torch.linalg.solve_triangular(tril.mT, cross, upper=True)
    return 0.5 * (h + h.mT)


def _check_q(q, who: str) -> FullRankNormal:
    if not isinstance(q, FullRankNormal) or q.batch_shape != ():
        raise TypeError(f"{who}: q must be one FullRankNormal (batch_shape ()); got {q!r}")
    return q


def stein_moments(
    log_prob: Callable[[Tensor], Tensor], num_samples: int = 32, generator: torch.Generator | None = None
) -> Callable[[FullRankNormal], Moments]:
    """Monte Carlo moments from gradients alone, the Hessian by Stein's lemma.

    Draws ``num_samples / 2`` antithetic pairs ``x = m +- L eps``.  All three estimates
    are unbiased; for a quadratic potential the gradient estimate is exact and the
    Hessian estimate is ``L^{-T} (mean eps eps^T) L^T A`` (symmetrized), whose error
    shrinks like ``1 / sqrt(num_samples)``.

    Args:
        log_prob: ``[n, D] -> [n]`` unnormalized log density (e.g. ``Model.log_density``).
        num_samples: draws per call, even (antithetic pairs).
        generator: optional ``torch.Generator`` for the draws.

    Returns:
        A callable ``q -> Moments``.

    References:
        Stein (1981); Price (1958); Diao et al. (ICML 2023), sec. 3.
    """
    _check_log_prob(log_prob, "stein_moments")
    if _check_count(num_samples, "num_samples", "stein_moments") % 2:
        raise ValueError(f"stein_moments: num_samples must be even (antithetic pairs); got {num_samples}")

    def moments(q: FullRankNormal) -> Moments:
        q = _check_q(q, "stein_moments")
        loc, tril = q.loc.detach(), q.scale_tril.detach()
        half = torch.randn(num_samples // 2, loc.shape[-1], dtype=loc.dtype, device=loc.device, generator=generator)
        eps = torch.cat([half, -half])
        v, grad, _ = _potential_and_grad(log_prob, loc + eps @ tril.mT)
        weights = torch.full_like(v, 1.0 / num_samples)
        return Moments(v.mean(), grad.mean(0), _stein_hessian(eps, grad, weights, tril))

    return moments


def hessian_moments(
    log_prob: Callable[[Tensor], Tensor], num_samples: int = 1, generator: torch.Generator | None = None
) -> Callable[[FullRankNormal], Moments]:
    """Monte Carlo moments with the exact Hessian at each draw (autograd Hessian-vector products).

    ``hess V(x_i)`` is formed row by row from ``D`` Hessian-vector products
    ``grad(e_j^T grad V)``, so each call costs one gradient and ``D`` double-backward
    passes over the ``num_samples`` draws.  With ``num_samples=1`` this is the stochastic
    oracle of Diao et al.'s Algorithm 1.

    Args:
        log_prob: ``[n, D] -> [n]``, twice differentiable by autograd.
        num_samples: draws per call.
        generator: optional ``torch.Generator``.

    Returns:
        A callable ``q -> Moments``.

    References:
        Diao et al. (ICML 2023), Algorithm 1; Pearlmutter, *Fast Exact Multiplication by the
        Hessian* (Neural Computation 1994).
    """
    _check_log_prob(log_prob, "hessian_moments")
    _check_count(num_samples, "num_samples", "hessian_moments")

    def moments(q: FullRankNormal) -> Moments:
        q = _check_q(q, "hessian_moments")
        loc, tril = q.loc.detach(), q.scale_tril.detach()
        d = loc.shape[-1]
        eps = torch.randn(num_samples, d, dtype=loc.dtype, device=loc.device, generator=generator)
        with torch.enable_grad():
            v, grad, x = _potential_and_grad(log_prob, loc + eps @ tril.mT, create_graph=True)
            rows = [torch.autograd.grad(grad[:, j].sum(), x, retain_graph=j < d - 1)[0].mean(0) for j in range(d)]
        h = torch.stack(rows)
        return Moments(v.mean(), grad.detach().mean(0), 0.5 * (h + h.mT))

    return moments


def _gauss_hermite(degree: int, dtype, device) -> tuple[Tensor, Tensor]:
    """Nodes and weights (summing to 1) of the ``degree``-point rule for ``N(0, 1)``, by Golub-Welsch."""
    off = torch.arange(1, degree, dtype=torch.float64).sqrt()  # probabilists' Hermite recurrence
    jacobi = torch.diag(off, 1) + torch.diag(off, -1)
    nodes, vectors = torch.linalg.eigh(jacobi)
    weights = vectors[0].pow(2)
    return nodes.to(dtype=dtype, device=device), (weights / weights.sum()).to(dtype=dtype, device=device)


def quadrature_moments(log_prob: Callable[[Tensor], Tensor], degree: int = 12) -> Callable[[FullRankNormal], Moments]:
    """Deterministic moments by tensor-product Gauss-Hermite quadrature (``degree ** D`` nodes).

    The ``degree``-point rule is exact for polynomials up to degree ``2 degree - 1`` in
    each coordinate of ``eps``; the Hessian uses Stein's lemma on the nodes, so only
    gradients are needed.  Meant for ``D`` up to about 4.

    Args:
        log_prob: ``[n, D] -> [n]``.
        degree: nodes per dimension.

    Returns:
        A callable ``q -> Moments``.

    References:
        Golub & Welsch (1969); Stein (1981).
    """
    _check_log_prob(log_prob, "quadrature_moments")
    _check_count(degree, "degree", "quadrature_moments")

    def moments(q: FullRankNormal) -> Moments:
        q = _check_q(q, "quadrature_moments")
        loc, tril = q.loc.detach(), q.scale_tril.detach()
        d = loc.shape[-1]
        nodes, weights = _gauss_hermite(degree, loc.dtype, loc.device)
        eps = torch.cartesian_prod(*[nodes] * d).reshape(-1, d)
        w = torch.cartesian_prod(*[weights] * d).reshape(-1, d).prod(-1)
        v, grad, _ = _potential_and_grad(log_prob, loc + eps @ tril.mT)
        return Moments((w * v).sum(), (w[:, None] * grad).sum(0), _stein_hessian(eps, grad, w, tril))

    return moments


def gaussian_moments(loc: Tensor, precision: Tensor) -> Callable[[FullRankNormal], Moments]:
    """Exact moments for the Gaussian target ``N(loc, precision^{-1})`` (normalized).

    With ``A = precision``: ``E_q[V] = (tr(A Sigma) + (m - loc)^T A (m - loc) + D log 2 pi
    - log det A) / 2``, ``E_q[grad V] = A (m - loc)`` and ``E_q[hess V] = A``, so
    ``E_q[V] - H(q) = KL(q || target)`` exactly.

    Args:
        loc: ``[D]`` target mean.
        precision: ``[D, D]`` symmetric positive-definite target precision.

    Returns:
        A callable ``q -> Moments``.

    Raises:
        ValueError: if the shapes disagree or ``precision`` is not positive definite.

    References:
        Diao, Balasubramanian, Chewi & Salim (ICML 2023): with exact moments of a Gaussian
        target the target is FB-GVI's fixed point.
    """
    if not isinstance(loc, Tensor) or loc.dim() != 1:
        raise ValueError(f"gaussian_moments: loc must be a [D] tensor; got {loc!r}")
    d = loc.shape[0]
    if not isinstance(precision, Tensor) or precision.shape != (d, d):
        got = tuple(precision.shape) if isinstance(precision, Tensor) else type(precision).__name__
        raise ValueError(f"gaussian_moments: precision must be [D, D] = [{d}, {d}] to match loc; got {got}")
    chol, info = torch.linalg.cholesky_ex(precision)
    if bool(info) or not torch.allclose(precision, precision.mT):
        raise ValueError("gaussian_moments: precision must be symmetric positive definite")
    log_det = 2 * chol.diagonal().log().sum()

    def moments(q: FullRankNormal) -> Moments:
        q = _check_q(q, "gaussian_moments")
        diff = q.loc.detach() - loc
        grad = precision @ diff
        cov = q.covariance_matrix.detach()
        energy = 0.5 * ((precision * cov).sum() + diff @ grad + d * _LOG_2PI - log_det)
        return Moments(energy, grad, precision)

    return moments
