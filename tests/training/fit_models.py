"""Tiny models and data for the training tests (run in milliseconds per step)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

import vitorch as vt

LOG_2PI = math.log(2 * math.pi)


class TinyVAE(nn.Module):
    """Linear-Gaussian VAE: ``z ~ N(0, I_L)``, ``x | z ~ N(W z + b, I_D)``, a linear diagonal-Gaussian encoder.

    Its forward returns ``vt.loss`` with K particles, so every step draws from torch's
    global generator (what resume must reproduce).
    """

    def __init__(self, d: int = 4, latent: int = 2, k: int = 3, objective=None, estimator=None):
        super().__init__()
        self.enc = nn.Linear(d, 2 * latent)
        self.dec = nn.Linear(latent, d)
        self.k = k
        self.objective = objective or vt.objectives.iwae
        self.estimator = estimator or vt.estimators.reparam

    def log_joint(self, x: Tensor):
        def f(z: Tensor) -> Tensor:
            log_prior = (-0.5 * z.pow(2) - 0.5 * LOG_2PI).sum(-1)
            log_lik = (-0.5 * (x - self.dec(z)).pow(2) - 0.5 * LOG_2PI).sum(-1)
            return log_prior + log_lik

        return f

    def forward(self, x: Tensor) -> vt.LossOutput:
        loc, raw = self.enc(x).chunk(2, dim=-1)
        q = vt.DiagNormal(loc, nn.functional.softplus(raw) + 1e-3)
        return vt.loss(self.log_joint(x), q, self.k, self.objective, self.estimator)


class Regression(nn.Module):
    """Deterministic least squares on ``(x, y)`` batches: a scalar loss, no sampling."""

    def __init__(self, d: int = 3):
        super().__init__()
        self.lin = nn.Linear(d, 1)

    def forward(self, batch) -> Tensor:
        x, y = batch
        return (self.lin(x).squeeze(-1) - y).pow(2).mean()


class RegressionBound(Regression):
    """:class:`Regression` returning a :class:`vitorch.LossOutput` whose bound per datum is minus
    the squared residual: deterministic, so its logged bound is known exactly."""

    def forward(self, batch) -> vt.LossOutput:
        x, y = batch
        bound = -(self.lin(x).squeeze(-1) - y).pow(2)
        return vt.LossOutput(loss=-bound.mean(), bound=bound.detach(), log_w=None, z=None)


def gaussian_data(n: int = 48, d: int = 4, seed: int = 0) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, 2, generator=g, dtype=torch.float64)
    return torch.randn(n, 2, generator=g, dtype=torch.float64) @ w.T + 0.3 * torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


def regression_data(n: int = 32, d: int = 3, seed: int = 0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = x @ torch.arange(1.0, d + 1, dtype=torch.float64) + 0.1 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


class NoisyRows(torch.utils.data.Dataset):
    """A map-style dataset that adds fresh noise from torch's global generator to each row,
    like dynamic binarization: resume must replay this randomness too."""

    def __init__(self, x: Tensor):
        self.x = x

    def __len__(self) -> int:
        return self.x.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.x[i] + 0.01 * torch.randn(self.x.shape[1:], dtype=self.x.dtype)


class Floored(nn.Module):
    """``N(x | mu, 1)`` with a diagonal-Normal guide through ``vt.loss``; a datum whose first
    coordinate exceeds 100 is outside the model's support: every particle has log-weight
    -inf and its bound sits at the -1e30 floor."""

    def __init__(self, d: int = 2):
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(d))
        self.raw_scale = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        q = vt.DiagNormal(self.loc.expand_as(x), nn.functional.softplus(self.raw_scale).expand_as(x) + 0.1)
        outside = x[:, 0] > 100

        def log_joint(z):
            log_p = (-0.5 * (x - z).pow(2) - 0.5 * math.log(2 * math.pi)).sum(-1)
            return log_p.masked_fill(outside, -math.inf)

        return vt.loss(log_joint, q, num_particles=3)


def floored_data(n: int = 16, bad=()):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(0))
    x[list(bad), 0] = 1e3
    return x
