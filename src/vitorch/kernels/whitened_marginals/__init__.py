"""Marginals ``q(f_b)`` of a sparse variational GP, with the Cholesky factor of ``K_mm``.

Backends: `.reference` (torch ops through triangular solves, the
specification) and `.fused` (two ``torch.autograd.Function``s: the Cholesky
factor with its inverse, and the marginals in four GEMMs with the gradient for
``K_mm`` in closed form; float32 and float64).  ``auto`` takes the fused backend
for every supported dtype, unless ``torch.compile`` is tracing or a ``torch.func``
transform is active: it does fewer ``O(M^2 B)`` passes at every size, so the op has
no size rule.  There is no Triton backend.

The Cholesky factorization itself is the caller's (``cholesky=``), so a model keeps
its own jitter policy and the kernels package imports nothing from the models.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference

__all__ = ["whitened_marginals", "FUSED_DTYPES"]

_NAME = "whitened_marginals"
FUSED_DTYPES = (torch.float32, torch.float64)


def whitened_marginals(
    k_mm: Tensor,
    k_mb: Tensor,
    loc: Tensor,
    root: Tensor,
    *,
    cholesky: Callable[[Tensor], Tensor] = torch.linalg.cholesky,
    whitened: bool = True,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Mean and variance updates of ``q(f_b)`` for a sparse GP, and the Cholesky factor of ``K_mm``.

    With ``K_mm = L L^T``, ``A = L^{-1} K_mb`` and q over the whitened ``v = L^{-1} u``
    with mean ``m`` and covariance ``R R^T``: ``q(f_b) = N(mu(X_b) + A^T m,
    k_bb + colsum(A * ((R R^T - I) A)))``.  This op returns the two updates; the
    caller adds the prior mean and ``diag(K_bb)``.

    Args:
        k_mm: ``[M, M]`` inducing covariance ``k(Z, Z)``.
        k_mb: ``[M, B]`` cross-covariance ``k(Z, X_b)``.
        loc: ``[M]`` q's mean.
        root: ``[M, M]`` a square root ``R`` of q's covariance (any, e.g. a Cholesky factor
            whose diagonal may be negative).
        cholesky: ``[M, M] -> [M, M]`` the lower Cholesky factor of ``k_mm``, possibly of
            ``k_mm + c I`` for a jitter ``c`` that does not depend on ``k_mm``'s graph.
        whitened: ``loc`` and ``root`` describe q over ``v`` (True) or over ``u = L v``
            (False; converted here by two triangular solves).
        backend: ``"auto"`` (default context), ``"reference"`` or ``"fused"``.  The fused
            backward is first-order only; force ``"reference"`` for second derivatives.

    Returns:
        ``mean [B]`` (``A^T m``), ``var [B]`` (``colsum(A * ((R R^T - I) A))``) and the
        factor ``L [M, M]``, all with gradients to ``k_mm``, ``k_mb``, ``loc`` and ``root``.

    Raises:
        ValueError: if the shapes are not ``[M, M]``, ``[M, B]``, ``[M]``, ``[M, M]``.
        KernelUnavailableError: if a backend is forced that cannot run this call.

    References:
        Hensman, Fusi & Lawrence, *Gaussian Processes for Big Data* (UAI 2013).
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification*
        (AISTATS 2015), eq. 8-9.
        Murray, *Differentiation of the Cholesky decomposition* (arXiv:1602.07527, 2016).
    """
    m = k_mm.shape[-1]
    if k_mm.shape != (m, m) or k_mb.dim() != 2 or k_mb.shape[0] != m or loc.shape != (m,) or root.shape != (m, m):
        raise ValueError(
            f"{_NAME}: expected k_mm [M, M], k_mb [M, B], loc [M], root [M, M]; got "
            f"{tuple(k_mm.shape)}, {tuple(k_mb.shape)}, {tuple(loc.shape)}, {tuple(root.shape)}"
        )
    choice = dispatch.choose(_NAME, k_mm, k_mb, loc, root, backend=backend, dtypes=None, fused=FUSED_DTYPES)
    impl = fused if choice == "fused" else reference
    return impl.whitened_marginals(k_mm, k_mb, loc, root, cholesky, whitened)
