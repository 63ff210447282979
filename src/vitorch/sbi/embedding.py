"""Embedding networks for the data ``x`` and the z-scoring layer in front of them.

NPE conditions its flow on a feature vector ``e(x)``.  For a small vector ``x`` the
identity (after z-scoring) is enough; a longer or structured ``x`` goes through a
learned embedding trained jointly with the flow:

* `MLPEmbedding`: a multilayer perceptron on the flattened ``x``;
* `DeepSetEmbedding`: for ``x`` made of ``m`` i.i.d. observations ``[m, E]``, the
  permutation-invariant ``rho(mean_j phi(x_j))`` of Zaheer et al., so the posterior
  cannot depend on the order of the observations.

References:
    Zaheer, Kottur, Ravanbakhsh, Poczos, Salakhutdinov & Smola, *Deep Sets* (NeurIPS 2017).
    Radev, Mertens, Voss, Ardizzone & Koethe, *BayesFlow: Learning complex stochastic
    models with invertible neural networks* (IEEE TNNLS 2020): summary networks trained with the flow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["Standardize", "MLPEmbedding", "DeepSetEmbedding"]


def _mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, int(h)), nn.ReLU()]
        width = int(h)
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


def _positive(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
    return v


class Standardize(nn.Module):
    """``(v - mean) / std`` with statistics stored as buffers (saved with the model).

    Args:
        shape: the shape of one ``v``.
        pool: pool the statistics over every dimension of ``shape`` but the last (one
            mean and standard deviation per feature of a set or sequence, which keeps a
            permutation-invariant embedding invariant); default one per coordinate.

    `Standardize.fit` sets the statistics from data ``[n, *shape]``; a coordinate with
    zero spread keeps ``std = 1``, so a constant feature passes through shifted, never
    divided by zero.

    References:
        Papamakarios & Murray, *Fast epsilon-free inference of simulation models with
        Bayesian conditional density estimation* (NeurIPS 2016) (whitened inputs).
    """

    def __init__(self, shape: Sequence[int], pool: bool = False):
        super().__init__()
        shape = tuple(shape)
        self.pool = bool(pool) and len(shape) > 1
        stat_shape = (1,) * (len(shape) - 1) + shape[-1:] if self.pool else shape
        self.register_buffer("mean", torch.zeros(stat_shape))
        self.register_buffer("std", torch.ones(stat_shape))

    @torch.no_grad()
    def fit(self, data: Tensor) -> None:
        """Set ``mean`` and ``std`` from ``data [n, *shape]`` (``n >= 2``)."""
        if self.pool:
            data = data.reshape(-1, *self.mean.shape)
        mean = data.mean(0)
        std = data.std(0)
        std = torch.where(std > 1e-12 * (1 + mean.abs()), std, torch.ones_like(std))
        self.mean.copy_(mean)
        self.std.copy_(std)

    def forward(self, v: Tensor) -> Tensor:
        return (v - self.mean) / self.std

    def inverse(self, v: Tensor) -> Tensor:
        """``mean + std * v``."""
        return self.mean + self.std * v


class MLPEmbedding(nn.Module):
    """``x [B, *x_shape] -> features [B, out_features]`` by an MLP on the flattened ``x``.

    Args:
        x_shape: the shape of one observation.
        out_features: the size of the embedding.
        hidden: hidden widths (ReLU).

    References:
        Papamakarios & Murray, *Fast epsilon-free inference of simulation models with
        Bayesian conditional density estimation* (NeurIPS 2016).
    """

    def __init__(self, x_shape: Sequence[int], out_features: int = 20, hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.x_shape = torch.Size(x_shape)
        self.out_features = _positive("out_features", out_features)
        self.net = _mlp(math.prod(self.x_shape), hidden, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        n = len(self.x_shape)
        if tuple(x.shape[x.dim() - n :]) != tuple(self.x_shape):
            raise ValueError(f"MLPEmbedding: x must end in {tuple(self.x_shape)}; got {tuple(x.shape)}")
        return self.net(x.flatten(x.dim() - n) if n else x.unsqueeze(-1))


class DeepSetEmbedding(nn.Module):
    """Permutation-invariant embedding of ``m`` i.i.d. observations: ``rho(mean_j phi(x_j))``.

    Args:
        element_features: ``E``, the size of one observation ``x_j``.
        out_features: the size of the embedding.
        hidden: hidden widths of ``phi`` and of ``rho`` (ReLU).
        latent_features: the width of ``phi``'s output, which is pooled.

    `vitorch.sbi.NPE` z-scores such ``x`` per feature (pooled over the set), which
    keeps the posterior invariant to the order of the observations.

    Shapes: ``x [B, m, E] -> [B, out_features]``; the mean (not the sum) pools, so a
    set of a different size ``m`` gives features on the same scale.

    References:
        Zaheer et al., *Deep Sets* (NeurIPS 2017), Theorem 2.
    """

    permutation_invariant = True

    def __init__(
        self,
        element_features: int,
        out_features: int = 20,
        hidden: Sequence[int] = (64, 64),
        latent_features: int = 64,
    ):
        super().__init__()
        self.element_features = _positive("element_features", element_features)
        self.out_features = _positive("out_features", out_features)
        latent = _positive("latent_features", latent_features)
        self.phi = _mlp(self.element_features, hidden, latent)
        self.rho = _mlp(latent, hidden, self.out_features)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2 or x.shape[-1] != self.element_features:
            raise ValueError(f"DeepSetEmbedding: x must be [*batch, m, {self.element_features}]; got {tuple(x.shape)}")
        return self.rho(self.phi(x).mean(-2))
