"""Reference RBF cross-covariance: ``exp(log s^2 - |a_i - b_j|^2 / 2)`` in plain torch ops.

This is the specification of `vitorch.kernels.rbf_cross` and its path for
dtypes the fused backend does not take.  The squared distance is expanded as
``|a|^2 + |b|^2 - 2 a.b`` (one GEMM instead of an ``[M, B, D]`` difference tensor)
and clamped at zero, where rounding can push it slightly below.

References:
    Rasmussen & Williams, Gaussian Processes for Machine Learning (2006), eq. 4.9.
"""

from __future__ import annotations

from torch import Tensor

__all__ = ["rbf_cross"]


def rbf_cross(a: Tensor, b: Tensor, log_var: Tensor) -> Tensor:
    """``exp(log_var - |a_i - b_j|^2 / 2)``.

    Args:
        a: ``[M, D]`` inputs already divided by the lengthscales.
        b: ``[B, D]`` inputs on the same scale.
        log_var: ``[]`` the log signal variance ``log s^2``.

    Returns:
        ``[M, B]`` the covariance matrix.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), eq. 4.9.
    """
    sqdist = a.pow(2).sum(-1, keepdim=True) + b.pow(2).sum(-1) - 2.0 * (a @ b.mT)
    return (log_var - 0.5 * sqdist.clamp_min(0.0)).exp()
