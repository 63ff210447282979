"""Unbiased squared MMD with RBF or inverse-multiquadric kernels, in torch: the specification.

This is `vitorch.mmd.mmd` itself (the InfoVAE divergence); the torch path
materializes the three Gram matrices ``[n, n]``, ``[m, m]`` and ``[n, m]``, which
the tiled kernel never does:

    MMD^2 = sum_{i != i'} k(x_i, x_i') / (n (n - 1)) + sum_{j != j'} k(y_j, y_j') / (m (m - 1))
            - 2 sum_{i, j} k(x_i, y_j) / (n m),

with ``k = sum_s exp(-r / (2 s^2))`` (RBF) or ``sum_s c_s / (c_s + r)``,
``c_s = 2 D s^2`` (IMQ), ``r = ||x - y||^2 = ||x||^2 + ||y||^2 - 2 x.y`` clamped at 0.

References:
    Gretton et al., A Kernel Two-Sample Test (JMLR 2012).
    Zhao, Song & Ermon, InfoVAE (AAAI 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from vitorch.mmd import mmd as _mmd


def mmd(z_q: Tensor, z_p: Tensor, kernel: str, scales: Sequence[float]) -> Tensor:
    """``[*batch]`` unbiased MMD² of ``z_q [*batch, n, D]`` and ``z_p [*batch, m, D]``."""
    return _mmd(z_q, z_p, kernel=kernel, scale=list(scales))
