"""RSVI draws for the rejection-sampled families: a Gamma draw from `vitorch.kernels` and its correction.

`vitorch.families.RSVIGamma`, `vitorch.families.RSVIBeta` and
`vitorch.families.RSVIDirichlet` all reparameterize Marsaglia-Tsang Gamma draws
through the accepted proposal noise ``eps`` (Naesseth et al., 2017).  The sampling maths
(the proposal ``h(eps, a)``, the acceptance density ``pi(eps; a)``, shape augmentation,
the log-space product of uniforms) lives in one place, `vitorch.kernels.gamma.reference`,
and the draw itself is the `vitorch.kernels.log_standard_gamma` op; this module only
adds the correction's score ``log pi(eps; alpha + B_eff)`` the families hand to the estimator.

References:
    Marsaglia & Tsang, A Simple Method for Generating Gamma Variables (ACM Trans. Math. Softw., 2000).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
"""

from __future__ import annotations

from torch import Tensor

from .. import kernels
from ..kernels.gamma import check_boost, effective_boost, log_accept_density

__all__ = ["check_boost", "log_standard_gamma"]


def log_standard_gamma(alpha: Tensor, boost: int) -> tuple[Tensor, Tensor, Tensor]:
    """Reparameterized ``log x`` for ``x ~ Gamma(alpha, 1)`` with its RSVI correction.

    Args:
        alpha: ``[*shape]`` shapes (already expanded to the sample shape), with or
            without gradient.
        boost: shape augmentations ``B``; elements with ``alpha < 1`` use ``max(B, 1)``.

    Returns:
        ``log_x [*shape]``: ``log h(eps, alpha + B) + sum_i log(u_i) / (alpha + i)``,
        differentiable in ``alpha`` through the accepted ``eps`` and the ``u_i``;
        ``log_corr [*shape]``: ``log pi(eps; alpha + B)`` at the detached ``eps``,
        differentiable in ``alpha`` (the score whose weight is the learning signal);
        ``proposals [*shape]``: proposals used per element.

    References:
        Naesseth, Ruiz, Linderman & Blei (AISTATS 2017): the correction term.
    """
    log_x, eps, proposals = kernels.log_standard_gamma(alpha, boost)
    log_corr = log_accept_density(eps, alpha + effective_boost(alpha.detach(), boost))
    return log_x, log_corr, proposals
