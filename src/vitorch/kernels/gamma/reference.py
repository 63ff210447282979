"""Marsaglia-Tsang Gamma sampling with shape augmentation, in torch: the specification and the RSVI maths.

Marsaglia & Tsang (2000) draw ``x ~ Gamma(a, 1)`` for ``a >= 1`` by proposing
``eps ~ N(0, 1)`` and returning ``h(eps, a) = d (1 + c eps)^3`` with ``d = a - 1/3``,
``c = 1 / sqrt(9 d)``, accepted when ``log u < eps^2 / 2 + d - d v + d log v``
(``v = (1 + c eps)^3 > 0``, ``u ~ U(0, 1)``).  The accepted ``eps`` has density

    pi(eps; a) = Gamma(h(eps, a); a, 1) |dh/deps|,   |dh/deps| = sqrt(d) (1 + c eps)^2,

so ``E f(x) = E_pi[f(h(eps, a))]`` and (Naesseth et al., 2017)

    d/da E f(x) = E_pi[f'(h) dh/da] + E_pi[f(h) d/da log pi(eps; a)].

The first term is the pathwise ("reparameterization") part, the second the
correction, a score-function term in the acceptance density
(`log_accept_density`).  Shape augmentation samples at ``a = alpha + B`` and
multiplies by ``prod_{i<B} u_i^{1/(alpha+i)}``, which is ``Gamma(alpha)`` again:

    log x = log h(eps, a) + sum_{i < B} log(u_i) / (alpha + i).

``pi(eps; alpha + B)`` is then close to a standard normal whose score barely depends on
``alpha``, so the correction becomes small (but stays exact).  For ``alpha < 1`` at least
one boost is needed (Marsaglia-Tsang needs ``a >= 1``), so ``B_eff = max(B, 1)`` there.
Everything is computed in log space: at ``alpha = 1e-3`` the factor ``u^{1/alpha}``
underflows for most draws, but its logarithm is an ordinary number.

The Triton kernel draws ``eps`` and ``u`` in-kernel (Philox), so the two backends' draws
differ: `log_standard_gamma_from_noise` is the deterministic part the kernel is
compared with, and the draws are tested for goodness of fit.

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
    "check_boost",
    "effective_boost",
    "marsaglia_tsang_eps",
    "log_h",
    "log_accept_density",
    "acceptance_rate",
    "log_standard_gamma_from_noise",
    "log_standard_gamma",
]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check_boost(boost, name: str) -> int:
    """Return ``boost`` as an int, or raise ``ValueError`` naming ``name`` unless it is an integer >= 0."""
    if isinstance(boost, bool) or not isinstance(boost, int) or boost < 0:
        raise ValueError(f"{name}: boost must be an integer >= 0 (the number of shape augmentations); got {boost!r}")
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
    is about ``N / r(a)`` normal and uniform draws (``r`` is `acceptance_rate`).

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
    treated as data (pass it detached).  Shapes broadcast.  With ``a = alpha + B_eff``
    it is the score whose weight is the RSVI correction.
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


def log_standard_gamma_from_noise(alpha: Tensor, boost: int, eps: Tensor, log_u: Tensor) -> Tensor:
    """``log x`` for given accepted noise ``eps [*shape]`` and log-uniforms ``log_u [n, *shape]``.

    Differentiable in ``alpha`` (the pathwise RSVI part); rows of ``log_u`` past an
    element's own number of augmentations are ignored, and ``n`` may be 0 when no
    element needs one.
    """
    boosts = effective_boost(alpha.detach(), boost)
    log_x = log_h(eps, alpha + boosts)
    i = torch.arange(log_u.shape[0], dtype=alpha.dtype, device=alpha.device).reshape((-1,) + (1,) * alpha.dim())
    return log_x + torch.where(i < boosts, log_u / (alpha + i), 0.0).sum(0)


def log_standard_gamma(alpha: Tensor, boost: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(log_x, eps, proposals)`` drawn with torch's generator.

    Args:
        alpha: ``[*shape]`` positive shapes (already expanded to the sample shape),
            with or without gradient.
        boost: augmentations ``B >= 0``; elements with ``alpha < 1`` use ``max(B, 1)``.

    Returns:
        ``log_x [*shape]`` (differentiable in ``alpha`` through the accepted ``eps`` and
        the ``u_i``), the accepted noise ``eps [*shape]`` (detached) at shape
        ``alpha + B_eff`` and the number of proposals per element (int64).
    """
    boosts = effective_boost(alpha.detach(), boost)
    eps, proposals = marsaglia_tsang_eps(alpha.detach() + boosts)
    # Only as many uniforms as the largest per-element boost: none when every shape is >= 1 and B = 0.
    n_max = max(boost, 1) if bool((alpha.detach() < 1).any()) else boost
    # 1 - U[0, 1) lies in (0, 1], so the logarithm is finite.
    log_u = torch.log1p(-torch.rand((n_max,) + alpha.shape, dtype=alpha.dtype, device=alpha.device))
    return log_standard_gamma_from_noise(alpha, boost, eps, log_u), eps, proposals
