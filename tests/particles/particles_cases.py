"""Targets shared by the particle tests: a correlated 2-D Gaussian and a 6-D Bayesian logistic regression.

The logistic regression's data and its NUTS reference live in ``data/logistic_nuts.json``,
written once by ``benchmarks/reference/particles_nuts.py`` (NumPyro NUTS, 4 x 5000 draws).
"""

from __future__ import annotations

import json
import math
import pathlib

import torch
import torch.nn.functional as F
from torch import Tensor

DATA = pathlib.Path(__file__).resolve().parent / "data" / "logistic_nuts.json"

MU = (1.0, -2.0)
COV = ((2.0, 0.8), (0.8, 1.0))


def gaussian() -> torch.distributions.MultivariateNormal:
    return torch.distributions.MultivariateNormal(torch.tensor(MU), torch.tensor(COV))


def iid_tolerances(mu: Tensor, cov: Tensor, n: int, z: float) -> tuple[Tensor, Tensor]:
    """``z`` standard errors of the mean ``[D]`` and covariance ``[D, D]`` of ``n`` iid draws of N(mu, cov).

    For iid Gaussian draws ``Var(mean_d) = cov_dd / n`` and
    ``Var(cov_hat_ij) = (cov_ii cov_jj + cov_ij^2) / n`` (Isserlis; divisor ``n``, the
    ``O(1/n^2)`` bias of that divisor is below 1 % of the tolerance here).
    """
    d = cov.diagonal()
    return z * (d / n).sqrt(), z * ((d[:, None] * d[None, :] + cov.pow(2)) / n).sqrt()


def reference() -> dict:
    return json.loads(DATA.read_text())


class Logistic:
    """The bundled logistic regression: ``log p(theta) = log N(w; 0, I) + log N(b; 0, 25) + sum_i log Bern(y_i)``.

    ``log_prob(theta [n, 6]) -> [n]``; ``grad(theta [6]) -> [6]`` written by hand (the
    oracle for the one-particle test).
    """

    def __init__(self):
        ref = reference()
        self.x = torch.tensor(ref["x"])
        self.y = torch.tensor(ref["y"])
        self.dim = self.x.shape[1] + 1

    def log_prob(self, theta: Tensor) -> Tensor:
        w, b = theta[..., :-1], theta[..., -1]
        logits = w @ self.x.T + b[..., None]
        prior = -0.5 * w.pow(2).sum(-1) - 0.5 * (b / 5.0).pow(2) - 0.5 * self.dim * math.log(2 * math.pi)
        prior = prior - math.log(5.0)
        return prior + (self.y * logits - F.softplus(logits)).sum(-1)

    def mean_neg_hessian(self, theta: Tensor) -> Tensor:
        """``[6, 6]`` ``-(1/n) sum_i hess log p(theta_i)`` in closed form: prior precision plus
        ``X~^T diag(mean_i sigma_ik (1 - sigma_ik)) X~`` with ``X~ = [X, 1]``."""
        xt = torch.cat([self.x, torch.ones(self.x.shape[0], 1)], 1)
        s = torch.sigmoid(theta[:, :-1] @ self.x.T + theta[:, -1:])  # [n, N]
        prior = torch.diag(torch.tensor([1.0] * (self.dim - 1) + [1 / 25.0]))
        return prior + (xt.T * (s * (1 - s)).mean(0)) @ xt

    def grad(self, theta: Tensor) -> Tensor:
        w, b = theta[:-1], theta[-1]
        r = self.y - torch.sigmoid(self.x @ w + b)  # dlog-lik / dlogit
        return torch.cat([self.x.T @ r - w, (r.sum() - b / 25.0).reshape(1)])
