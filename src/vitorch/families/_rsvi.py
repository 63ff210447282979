"""Marsaglia-Tsang Gamma sampling with reparameterization through the accepted noise (RSVI).

Marsaglia & Tsang (2000) draw ``x ~ Gamma(a, 1)`` for ``a >= 1`` by proposing
``eps ~ N(0, 1)`` and returning ``h(eps, a) = d (1 + c eps)^3`` with ``d = a - 1/3``,
``c = 1 / sqrt(9 d)``, accepted when ``log u < eps^2 / 2 + d - d v + d log v``
(``v = (1 + c eps)^3 > 0``, ``u ~ U(0, 1)``).  The accepted ``eps`` has density

    pi(eps; a) = Gamma(h(eps, a); a, 1) |dh/deps|,   |dh/deps| = sqrt(d) (1 + c eps)^2,

so ``E f(x) = E_pi[f(h(eps, a))]`` and (Naesseth et al., 2017)

    d/da E f(x) = E_pi[f'(h) dh/da] + E_pi[f(h) d/da log pi(eps; a)].

The first term is the pathwise ("reparameterization") part, the second the
correction, a score-function term in the acceptance density.  Shape augmentation
samples at ``a + B`` and multiplies by ``prod_{i=1..B} u_i^{1/(a+i-1)}``, which is
``Gamma(a)`` again; ``pi(eps; a + B)`` is then close to a standard normal whose
score barely depends on ``a``, so the correction becomes small (but stays exact).

For ``a < 1`` at least one boost is needed (Marsaglia-Tsang needs ``a >= 1``), so
``B_eff = max(B, 1)`` there.  Everything is computed in log space
(``log x = log h + sum_i log(u_i) / (a + i - 1)``): at ``a = 1e-3`` the factor
``u^{1/a}`` underflows for most draws, but its logarithm is an ordinary number.

References:
    Marsaglia & Tsang, A Simple Method for Generating Gamma Variables (ACM Trans. Math. Softw., 2000).
    Naesseth, Ruiz, Linderman & Blei, Reparameterization Gradients through
    Acceptance-Rejection Sampling Algorithms (AISTATS 2017).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "effective_boost",
    "marsaglia_tsang_eps",
    "log_h",
    "log_accept_density",
    "acceptance_rate",
    "log_standard_gamma",
    "check_boost",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check_boost(boost, family: str) -> int:
    """Return ``boost`` as an int, or raise ``ValueError`` naming it unless it is an integer >= 0."""
    if isinstance(boost, bool) or not isinstance(boost, int) or boost < 0:
        raise ValueError(f"{family}: boost must be an integer >= 0 (the number of shape augmentations); got {boost!r}")
    return boost


def effective_boost(alpha: Tensor, boost: int) -> Tensor:
    """Per-element number of augmentations: ``boost``, raised to 1 where ``alpha < 1``.

    Marsaglia-Tsang needs a shape of at least one, so ``alpha < 1`` always samples at
    ``alpha + max(boost, 1)``; the returned tensor has ``alpha``'s shape and dtype.
    """
    return torch.where(alpha < 1, float(max(boost, 1)), float(boost)).to(alpha.dtype)


def _accepts(e: Tensor, u: Tensor, d: Tensor, c: Tensor) -> Tensor:
    """The Marsaglia-Tsang test ``log u < e^2/2 + d - d v + d log v`` (and ``v > 0``)."""
    one_plus = 1.0 + c * e
    ok = one_plus > 0
    log_v = 3.0 * torch.log(torch.where(ok, one_plus, 1.0))
    # exp(log v) - 1 - log v >= 0; expm1 keeps the test accurate when v is near one (large a).
    return ok & (torch.log(u) < 0.5 * e * e - d * (torch.expm1(log_v) - log_v))


def marsaglia_tsang_eps(a: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Accepted Marsaglia-Tsang noise for shapes ``a >= 1`` (no gradient).

    Rejected proposals are redrawn only for the elements still pending, so the cost
    is about ``N / r(a)`` normal and uniform draws (``r`` is :func:`acceptance_rate`).

    Args:
        a: ``[*shape]`` Gamma shapes, each ``>= 1``.
        generator: optional random generator.

    Returns:
        ``eps [*shape]``, accepted noise, and ``proposals [*shape]`` (int64), how many
        proposals each element used (for acceptance-rate diagnostics).  Elements whose
        shape is NaN, infinite or below 1/3 (only reachable without parameter
        validation) get ``eps = NaN`` after one proposal rather than looping forever.
    """
    a = a.detach()
    flat = a.reshape(-1)
    d = flat - 1.0 / 3.0
    c = torch.rsqrt(9.0 * d)
    # The first round covers every element without gathers; later rounds only the rejected few.
    eps = torch.randn(flat.shape, dtype=flat.dtype, device=flat.device, generator=generator)
    u = torch.rand(flat.shape, dtype=flat.dtype, device=flat.device, generator=generator)
    # Unchecked bad shapes (validate_args=False with a NaN or non-positive concentration) would
    # never be accepted: they get NaN noise at once, so the error shows instead of a hang.
    bad = ~(torch.isfinite(d) & (d > 0))
    eps = torch.where(bad, torch.nan, eps)
    pending = torch.nonzero(~(_accepts(eps, u, d, c) | bad)).squeeze(-1)
    proposals = torch.ones(flat.shape, dtype=torch.int64, device=flat.device)
    while pending.numel() > 0:
        n = pending.numel()
        e = torch.randn(n, dtype=flat.dtype, device=flat.device, generator=generator)
        u = torch.rand(n, dtype=flat.dtype, device=flat.device, generator=generator)
        accept = _accepts(e, u, d[pending], c[pending])
        proposals[pending] += 1
        eps[pending[accept]] = e[accept]
        pending = pending[~accept]
    return eps.reshape(a.shape), proposals.reshape(a.shape)


def log_h(eps: Tensor, a: Tensor) -> Tensor:
    """``log h(eps, a) = log(a - 1/3) + 3 log(1 + eps / sqrt(9a - 3))``, differentiable in ``a``."""
    d = a - 1.0 / 3.0
    return torch.log(d) + 3.0 * torch.log1p(eps * torch.rsqrt(9.0 * d))


def log_accept_density(eps: Tensor, a: Tensor) -> Tensor:
    """``log pi(eps; a)``, the log-density of the accepted noise, differentiable in ``a``.

    ``pi(eps; a) = Gamma(h; a, 1) |dh/deps|`` with ``h = h(eps, a)``; ``eps`` is
    treated as data (pass it detached).  Shapes broadcast.
    """
    d = a - 1.0 / 3.0
    lh = log_h(eps, a)
    log_jac = 0.5 * torch.log(d) + 2.0 * torch.log1p(eps * torch.rsqrt(9.0 * d))
    return (a - 1.0) * lh - torch.exp(lh) - torch.lgamma(a) + log_jac


def acceptance_rate(a: Tensor) -> Tensor:
    """Marsaglia-Tsang acceptance probability ``r(a) = Gamma(a) e^d / (sqrt(2 pi) d^(d - 1/6))``.

    It follows from ``r = E_{N(0,1)}[exp(eps^2/2 + d - d v + d log v)]`` by the change of
    variables ``x = d v``; ``r(1) ~ 0.951`` and ``r -> 1`` as ``a`` grows.
    """
    d = a - 1.0 / 3.0
    return torch.exp(torch.lgamma(a) + d - (d - 1.0 / 6.0) * torch.log(d) - _HALF_LOG_2PI)


def log_standard_gamma(
    alpha: Tensor, boost: int, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor, Tensor]:
    """Reparameterized ``log x`` for ``x ~ Gamma(alpha, 1)`` with its RSVI correction.

    Args:
        alpha: ``[*shape]`` shapes (already expanded to the sample shape), with or
            without gradient.
        boost: shape augmentations ``B``; elements with ``alpha < 1`` use ``max(B, 1)``.
        generator: optional random generator.

    Returns:
        ``log_x [*shape]``: ``log h(eps, alpha + B) + sum_i log(u_i) / (alpha + i - 1)``,
        differentiable in ``alpha`` through the accepted ``eps`` and the ``u_i``;
        ``log_corr [*shape]``: ``log pi(eps; alpha + B)`` at the detached ``eps``,
        differentiable in ``alpha`` (the score whose weight is the learning signal);
        ``proposals [*shape]``: proposals used per element.
    """
    boosts = effective_boost(alpha.detach(), boost)
    a = alpha + boosts
    eps, proposals = marsaglia_tsang_eps(a, generator)
    log_x = log_h(eps, a)
    n_max = max(boost, 1) if bool((alpha.detach() < 1).any()) else boost
    if n_max > 0:
        # One uniform per possible augmentation; the mask drops the ones an element does not use.
        i = torch.arange(n_max, dtype=alpha.dtype, device=alpha.device).reshape((n_max,) + (1,) * alpha.dim())
        u = torch.rand((n_max,) + alpha.shape, dtype=alpha.dtype, device=alpha.device, generator=generator)
        # 1 - U(0,1) lies in (0, 1], so log never sees zero.
        log_u = torch.log1p(-u)
        used = i < boosts
        log_x = log_x + torch.where(used, log_u / (alpha + i), 0.0).sum(0)
    return log_x, log_accept_density(eps, a), proposals
