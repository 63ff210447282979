"""The linear-Gaussian VAE oracle used by the unscented and silent-gradient tests.

``z ~ N(0, I_D)``, ``x | z ~ N(W z + b, s^2 I_O)``: the evidence is
``N(x; b, W W^T + s^2 I)``, the posterior ``N(P^{-1} W^T (x - b) / s^2, P^{-1})`` with
``P = I + W^T W / s^2``, and the ELBO of a Gaussian guide ``N(m, S)`` is written here
with dense matrices only (no vitorch code), so it is an independent oracle.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

LOG_2PI = math.log(2 * math.pi)


def log_joint(x: Tensor, w: Tensor, b: Tensor, s):
    """``z [K, *batch, D] -> log p(x, z) [K, *batch]``."""

    def f(z: Tensor) -> Tensor:
        prior = -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * LOG_2PI)
        r = x - z @ w.mT - b
        o = x.shape[-1]
        lik = -0.5 * (r.pow(2) / s**2).sum(-1) - o * (0.5 * LOG_2PI + torch.log(torch.as_tensor(s)))
        return prior + lik

    return f


def log_evidence(x: Tensor, w: Tensor, b: Tensor, s) -> Tensor:
    cov = w @ w.mT + s**2 * torch.eye(w.shape[0])
    return torch.distributions.MultivariateNormal(b, cov).log_prob(x)


def posterior(x: Tensor, w: Tensor, b: Tensor, s) -> tuple[Tensor, Tensor]:
    """``(mean [*batch, D], covariance [D, D])``."""
    precision = torch.eye(w.shape[1]) + w.mT @ w / s**2
    cov = torch.linalg.inv(precision)
    return ((x - b) @ w / s**2) @ cov.mT, cov


def exact_elbo(x: Tensor, w: Tensor, b: Tensor, s, m: Tensor, cov: Tensor) -> Tensor:
    """``E_q[log p(x | z)] - KL(q || N(0, I))`` for ``q = N(m, cov)``, ``[*batch]``."""
    o, d = w.shape
    r = x - m @ w.mT - b
    trace = torch.diagonal(w @ cov @ w.mT, dim1=-2, dim2=-1).sum(-1)
    e_lik = -0.5 * (r.pow(2).sum(-1) + trace) / s**2 - 0.5 * o * (LOG_2PI + 2 * torch.log(torch.as_tensor(s)))
    neg_kl = 0.5 * (torch.logdet(cov) + d - torch.diagonal(cov, dim1=-2, dim2=-1).sum(-1) - m.pow(2).sum(-1))
    return e_lik + neg_kl
