"""The RBF (squared-exponential) cross-covariance of two sets of scaled inputs.

Backends: `.reference` (torch ops, the specification) and `.fused`
(one ``torch.autograd.Function`` with a hand-written backward, float32 and
float64).  ``auto`` takes the fused backend for every supported dtype, unless
``torch.compile`` is tracing or a ``torch.func`` transform is active: it does
fewer passes over the ``[M, B]`` result at every size, so the op has no size rule.
There is no Triton backend.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference

__all__ = ["rbf_cross", "FUSED_DTYPES"]

_NAME = "rbf_cross"
FUSED_DTYPES = (torch.float32, torch.float64)


def rbf_cross(a: Tensor, b: Tensor, log_var: Tensor, *, backend: str | None = None) -> Tensor:
    """``exp(log_var - |a_i - b_j|^2 / 2)`` for inputs already divided by the lengthscales.

    Args:
        a: ``[M, D]`` scaled inputs.
        b: ``[B, D]`` scaled inputs (may be ``a`` itself).
        log_var: ``[]`` the log signal variance ``log s^2``.
        backend: ``"auto"`` (default context), ``"reference"`` or ``"fused"``.  The fused
            backward is first-order only; force ``"reference"`` for second derivatives.

    Returns:
        ``[M, B]`` the covariance matrix, gradients to ``a``, ``b`` and ``log_var``.

    Raises:
        ValueError: if ``a`` and ``b`` are not ``[M, D]`` and ``[B, D]`` with the same ``D``,
            or ``log_var`` is not a scalar.
        KernelUnavailableError: if a backend is forced that cannot run this call.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), eq. 4.9.
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[-1] != b.shape[-1]:
        raise ValueError(f"{_NAME}: a and b must be [M, D] and [B, D]; got {tuple(a.shape)} and {tuple(b.shape)}")
    if log_var.dim() != 0:
        raise ValueError(f"{_NAME}: log_var must be a scalar tensor; got shape {tuple(log_var.shape)}")
    choice = dispatch.choose(_NAME, a, b, log_var, backend=backend, dtypes=None, fused=FUSED_DTYPES)
    if choice == "fused":
        return fused.rbf_cross(a, b, log_var)
    return reference.rbf_cross(a, b, log_var)
