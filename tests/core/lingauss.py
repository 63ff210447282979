"""The linear-Gaussian oracle model used across the core tests.

``z ~ N(theta, I_D)``, ``x | z ~ N(z, I_D)``: the posterior is
``N((x + theta) / 2, I / 2)`` and ``log Z = log N(x; theta, 2 I)``.  With a
diagonal Gaussian guide ``N(m, s^2)`` the ELBO and ``E_q[w^2]`` have closed forms,
so their gradients are exact oracles (by autograd of the closed form).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def log_joint(x: Tensor, theta: Tensor):
    """``z [K, *batch, D] -> log p(x, z) [K, *batch]``."""

    def f(z: Tensor) -> Tensor:
        return (-0.5 * (z - theta).pow(2) - 0.5 * (x - z).pow(2) - LOG_2PI).sum(-1)

    return f


def log_evidence(x: Tensor, theta: Tensor) -> Tensor:
    return (-0.5 * (x - theta).pow(2) / 2.0 - 0.5 * math.log(2 * math.pi * 2.0)).sum(-1)


def posterior(x: Tensor, theta: Tensor) -> tuple[Tensor, Tensor]:
    return (x + theta) / 2.0, torch.full_like(x, math.sqrt(0.5))


def exact_elbo(x: Tensor, theta: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """Closed-form ELBO ``[*batch]`` for the guide ``N(m, diag(s^2))``."""
    e_log_prior = -0.5 * ((m - theta).pow(2) + s.pow(2)) - 0.5 * LOG_2PI
    e_log_lik = -0.5 * ((x - m).pow(2) + s.pow(2)) - 0.5 * LOG_2PI
    entropy = 0.5 * torch.log(2 * math.pi * math.e * s.pow(2))
    return (e_log_prior + e_log_lik + entropy).sum(-1)


def exact_log_second_moment(x: Tensor, theta: Tensor, m: Tensor, s: Tensor) -> Tensor:
    """``log E_q[w^2]`` ``[*batch]`` in closed form (finite when ``s^2 > tau^2 / 2 = 1/4``).

    ``E_q[w^2] = Z^2 int post(z)^2 / q(z) dz`` and per dimension
    ``int post^2 / q = sqrt(2 pi s^2) / (2 pi tau^2) * sqrt(pi / a) * exp(b^2 / a + c)`` with
    ``a = 1/tau^2 - 1/(2 s^2)``, ``b = mu/tau^2 - m/(2 s^2)``, ``c = -mu^2/tau^2 + m^2/(2 s^2)``.
    """
    mu, tau = posterior(x, theta)
    tau2, s2 = tau.pow(2), s.pow(2)
    a = 1 / tau2 - 1 / (2 * s2)
    b = mu / tau2 - m / (2 * s2)
    c = -mu.pow(2) / tau2 + m.pow(2) / (2 * s2)
    log_int = 0.5 * torch.log(2 * math.pi * s2) - torch.log(2 * math.pi * tau2) + 0.5 * torch.log(math.pi / a)
    log_int = log_int + b.pow(2) / a + c
    return 2 * log_evidence(x, theta) + log_int.sum(-1)
