"""Kernel 4: Marsaglia-Tsang Gamma sampling with shape augmentation, returning the accepted noise (RSVI).

Besides the op, the package exports the pieces of RSVI maths a caller needs around it
(`check_boost`, `effective_boost`, `log_accept_density`, the correction's
score); `.reference` derives them.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from ..gaussian import draw_seed
from . import reference
from .reference import check_boost, effective_boost, log_accept_density

__all__ = ["log_standard_gamma", "check_boost", "effective_boost", "log_accept_density"]

# The kernel evaluates in float64 internally; half precision has no use for Gamma shapes.
_DTYPES = (torch.float32, torch.float64)


def log_standard_gamma(alpha: Tensor, boost: int = 0, *, backend: str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Reparameterized ``log x``, ``x ~ Gamma(alpha, 1)``, with the accepted Marsaglia-Tsang noise.

    Args:
        alpha: ``[*shape]`` positive shapes, already expanded to the sample shape.
        boost: shape augmentations ``B`` (``max(B, 1)`` is used where ``alpha < 1``).
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``log_x [*shape]``, differentiable in ``alpha`` (the pathwise RSVI part);
        ``eps [*shape]``, the accepted proposal noise at shape ``alpha + B``
        (``log_accept_density(eps, alpha + effective_boost(alpha, B))`` is the correction's score);
        ``proposals [*shape]``, proposals used per element.

    Raises:
        ValueError: if ``boost`` is not an integer ``>= 0``.

    References:
        Marsaglia & Tsang (2000); Naesseth et al. (2017).
    """
    boost = check_boost(boost, "log_standard_gamma")
    if dispatch.choose("log_standard_gamma", alpha, backend=backend, dtypes=_DTYPES) == "reference":
        return reference.log_standard_gamma(alpha, boost)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import LogStandardGamma

    log_x, eps, props = LogStandardGamma.apply(alpha.reshape(-1).contiguous(), boost, draw_seed())
    return log_x.reshape(alpha.shape), eps.reshape(alpha.shape), props.reshape(alpha.shape).long()
