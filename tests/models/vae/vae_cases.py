"""Shared cases for the VAE-zoo tests: the protocol test cases' data and evidence, and
the probabilistic-PCA data and training loop of the recipe tests.

* `LinearGaussianCase`: a VAE with the linear decoder ``x = W z + b + sigma eps``,
  ``z ~ N(0, I)``, on real data ``[32, DATA_DIM]``: the conjugate case whose log evidence
  is exact, ``p(x) = N(x; b, W W^T + sigma^2 I)`` (probabilistic PCA, Tipping & Bishop 1999),
  so the inherited bound test of :class:`vitorch.testing.ModelTestCase` has a target.
* `BinaryCase`: a model of binary data ``[32, BINARY_DIM]`` with no closed-form evidence.
* `ppca` draws data of known rank from that generator; `train` runs Adam with the learning
  rate decayed tenfold over the run (the ARD and inverse-Lipschitz recipe tests).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import MultivariateNormal

from vitorch.testing import ModelTestCase

DATA_DIM, LATENT, SIGMA = 6, 2, 0.5
BINARY_DIM = 12


def real_data() -> torch.Tensor:
    """``[32, DATA_DIM]`` draws of the rank-``LATENT`` linear-Gaussian generator (fixed seed)."""
    g = torch.Generator().manual_seed(11)
    mix = torch.randn(LATENT, DATA_DIM, generator=g)
    return torch.randn(32, LATENT, generator=g) @ mix + SIGMA * torch.randn(32, DATA_DIM, generator=g)


def binary_data() -> torch.Tensor:
    """``[32, BINARY_DIM]`` Bernoulli(0.4) draws (fixed seed)."""
    g = torch.Generator().manual_seed(12)
    return torch.bernoulli(torch.full((32, BINARY_DIM), 0.4), generator=g)


class LinearGaussianCase(ModelTestCase):
    """The conjugate linear-Gaussian VAE: exact ``log p(x)`` from the decoder's weights."""

    def make_data(self):
        return real_data()

    def exact_log_evidence(self, model, batch):
        w, b = model.decoder.weight, model.decoder.bias  # x = W z + b + sigma eps, z ~ N(0, I)
        cov = w @ w.T + SIGMA**2 * torch.eye(DATA_DIM)
        return MultivariateNormal(b, cov).log_prob(batch)

    def predict_args(self, batch):
        return (batch,)


class BinaryCase(ModelTestCase):
    """A model of `binary_data`; no closed-form evidence unless the subclass gives one."""

    def make_data(self):
        return binary_data()

    def predict_args(self, batch):
        return (batch,)


def ppca(rank: int, n: int, data_dim: int, sigma: float, seed: int, scale: float = 1.0):
    """``(x [n, data_dim], sigma)``: ``x = z M + sigma eps`` with ``z [n, rank]``, ``M = scale * N(0, 1)``."""
    g = torch.Generator().manual_seed(seed)
    mix = scale * torch.randn(rank, data_dim, generator=g)
    return torch.randn(n, rank, generator=g) @ mix + sigma * torch.randn(n, data_dim, generator=g), sigma


def train(model: nn.Module, x: torch.Tensor, steps: int, lr: float) -> nn.Module:
    """``steps`` full-batch Adam steps on ``model(x).loss``, the learning rate decayed from ``lr`` to ``lr / 10``."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.1 ** (s / steps))
    for _ in range(steps):
        opt.zero_grad()
        model(x).loss.backward()
        opt.step()
        decay.step()
    return model
