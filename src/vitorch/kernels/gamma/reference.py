"""Marsaglia-Tsang Gamma sampling with shape augmentation, in torch: the specification.

For shapes ``alpha`` and ``B`` augmentations (``max(B, 1)`` where ``alpha < 1``),
with ``a = alpha + B``, ``d = a - 1/3``, ``c = 1 / sqrt(9 d)``, an accepted
proposal ``eps ~ pi(eps; a)`` and uniforms ``u_i``:

    log x = log h(eps, a) + sum_{i < B} log(u_i) / (alpha + i),
    log h(eps, a) = log d + 3 log(1 + c eps),

which is ``log`` of a ``Gamma(alpha, 1)`` draw.  Its pathwise derivative in
``alpha`` (``eps`` and ``u`` held fixed) is the reparameterized part of the RSVI
gradient; the correction term ``log pi(eps; a)`` is computed from the returned
``eps`` by :func:`vitorch.families._rsvi.log_accept_density`.

The kernel draws ``eps`` and ``u`` in-kernel (Philox), so the two backends' draws
differ: :func:`log_standard_gamma_from_noise` is the deterministic part the
kernel is compared with, and the draws are tested for goodness of fit.

References:
    Marsaglia & Tsang, A Simple Method for Generating Gamma Variables (2000).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
"""

from __future__ import annotations

import torch
from torch import Tensor

from vitorch.families import _rsvi


def log_standard_gamma_from_noise(alpha: Tensor, boost: int, eps: Tensor, log_u: Tensor) -> Tensor:
    """``log x`` for given accepted noise ``eps [*shape]`` and log-uniforms ``log_u [max(B, 1), *shape]``.

    Differentiable in ``alpha``; rows of ``log_u`` past an element's own number of
    augmentations are ignored.
    """
    boosts = _rsvi.effective_boost(alpha.detach(), boost)
    log_x = _rsvi.log_h(eps, alpha + boosts)
    i = torch.arange(log_u.shape[0], dtype=alpha.dtype, device=alpha.device).reshape((-1,) + (1,) * alpha.dim())
    return log_x + torch.where(i < boosts, log_u / (alpha + i), 0.0).sum(0)


def log_standard_gamma(alpha: Tensor, boost: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_x, eps, proposals)`` drawn with torch's generator.

    Args:
        alpha: ``[*shape]`` positive shapes.
        boost: augmentations ``B >= 0``.

    Returns:
        ``log_x [*shape]`` (differentiable in ``alpha``), the accepted noise
        ``eps [*shape]`` and the number of proposals per element (int64).
    """
    boosts = _rsvi.effective_boost(alpha.detach(), boost)
    eps, proposals = _rsvi.marsaglia_tsang_eps(alpha.detach() + boosts)
    # 1 - U[0, 1) lies in (0, 1], so the logarithm is finite.
    log_u = torch.log1p(-torch.rand((max(boost, 1),) + alpha.shape, dtype=alpha.dtype, device=alpha.device))
    return log_standard_gamma_from_noise(alpha, boost, eps, log_u), eps, proposals
