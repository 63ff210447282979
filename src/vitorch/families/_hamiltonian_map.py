"""The flow map of uncorrected Hamiltonian MixFlows (Xu, Chen & Campbell, 2023, sec. 5).

The state is ``(x, rho, u)``: position ``x [*, d]``, momentum ``rho [*, d]`` with i.i.d.
standard Laplace marginals ``m``, and a pseudo-time ``u [*]`` uniform on ``[0, 1)``.  One
application of ``T`` is

1. ``L`` leapfrog steps of step size ``eps [d]`` for ``H(x, rho) = -log pi(x) + |rho|_1``
   (kinetic gradient ``sign(rho)``), which preserve volume;
2. a deterministic momentum refreshment, coordinate-wise
   ``rho_i <- F^{-1}((F(rho_i) + z(x_i, u)) mod 1)`` with ``F`` the Laplace CDF and
   ``z(x, u) = (sin(2 x + u) + 1) / 2``: for fixed ``(x, u)`` a shift modulo one of the
   uniform variable ``F(rho_i)``, so it preserves ``m`` and has Jacobian
   ``m(rho_i) / m(rho_i')``;
3. the pseudo-time shift ``u <- (u + xi) mod 1`` with irrational ``xi`` (``pi / 16``), which
   preserves the uniform law and volume.

Steps 2 and 3 preserve ``pi(x) m(rho) Unif(u)`` exactly; step 1 only approximately (the
discretized dynamics are not corrected by a Metropolis step, which is the "uncorrected").
Every step is invertible in closed form, so ``T^{-1}`` costs what ``T`` costs.

Functions here are pure: they take and return tensors, the gradient of ``log pi`` passed
along so that each leapfrog step evaluates it once.

References:
    Xu, Chen & Campbell, MixFlows: principled variational inference via mixed flows (ICML 2023),
    sec. 5 (uncorrected Hamiltonian MixFlows) and the authors' experiments' choice of
    ``z(x, u)``, ``xi`` and Laplace momentum.
    Neal, MCMC using Hamiltonian dynamics (Handbook of MCMC, 2011): the leapfrog integrator.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["laplace_log_density", "forward", "inverse", "DEFAULT_SHIFT"]

DEFAULT_SHIFT = math.pi / 16
_LOG2 = math.log(2.0)

Grad = Callable[[Tensor], Tensor]


def laplace_log_density(rho: Tensor) -> Tensor:
    """``[*]`` sum over the last dimension of the standard Laplace log-density ``-|rho| - log 2``."""
    return -(rho.abs() + _LOG2).sum(-1)


def _cdf(rho: Tensor) -> Tensor:
    # 0.5 e^rho below zero, 1 - 0.5 e^-rho above; exp(-|rho|) never overflows.
    half_tail = 0.5 * torch.exp(-rho.abs())
    return torch.where(rho < 0, half_tail, 1 - half_tail)


def _icdf(p: Tensor) -> Tensor:
    # Both branches evaluated on safe arguments so that torch.where passes no NaN gradient.
    tiny = torch.finfo(p.dtype).tiny
    low = torch.log((2 * p).clamp_min(tiny))
    high = -torch.log((2 - 2 * p).clamp_min(tiny))
    return torch.where(p < 0.5, low, high)


def _shift(x: Tensor, u: Tensor) -> Tensor:
    return 0.5 * (torch.sin(2 * x + u.unsqueeze(-1)) + 1)


def _leapfrog(x: Tensor, rho: Tensor, g: Tensor, eps: Tensor, steps: int, grad: Grad, sign: float):
    """``steps`` leapfrog steps (``sign = -1``: their exact inverse); ``g`` is the gradient at ``x``."""
    half = 0.5 * sign * eps
    for _ in range(steps):
        rho = rho + half * g
        x = x + sign * eps * torch.sign(rho)
        g = grad(x)
        rho = rho + half * g
    return x, rho, g


def forward(x, rho, u, g, eps, steps: int, grad: Grad, shift: float = DEFAULT_SHIFT):
    """One application of ``T``.

    Args:
        x, rho: ``[*, d]`` position and momentum; u: ``[*]`` pseudo-time in ``[0, 1)``.
        g: ``[*, d]`` gradient of ``log pi`` at ``x``.
        eps: ``[d]`` (broadcasting with ``x``) leapfrog step sizes.
        steps: ``L``, leapfrog steps per application.
        grad: ``x -> grad log pi(x)``.
        shift: ``xi``, the pseudo-time increment.

    Returns:
        ``(x', rho', u', g', ladj)`` with ``ladj [*]`` ``= log|det dT|`` at the input, which is
        ``sum_i log m(rho_i) - log m(rho_i')`` over the refreshment (leapfrog and shift have unit
        Jacobian).
    """
    x, rho, g = _leapfrog(x, rho, g, eps, steps, grad, 1.0)
    p = _cdf(rho) + _shift(x, u)
    p = torch.where(p >= 1, p - 1, p)
    new_rho = _icdf(p)
    ladj = (new_rho.abs() - rho.abs()).sum(-1)
    return x, new_rho, torch.remainder(u + shift, 1.0), g, ladj


def inverse(x, rho, u, g, eps, steps: int, grad: Grad, shift: float = DEFAULT_SHIFT):
    """One application of ``T^{-1}``; arguments as `forward`.

    Returns:
        ``(x, rho, u, g, ladj)`` with ``ladj [*] = log|det dT^{-1}|`` at the input.
    """
    u = torch.remainder(u - shift, 1.0)
    p = _cdf(rho) - _shift(x, u)
    p = torch.where(p < 0, p + 1, p)
    old_rho = _icdf(p)
    ladj = (old_rho.abs() - rho.abs()).sum(-1)
    x, old_rho, g = _leapfrog(x, old_rho, g, eps, steps, grad, -1.0)
    return x, old_rho, u, g, ladj
