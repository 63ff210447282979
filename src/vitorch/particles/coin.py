"""Coin sampling: SVGD's Stein direction followed by a coin-betting rule, with no learning rate.

Coin betting (Orabona & Pal, 2016) turns an online optimization problem into a gambler
betting on the outcomes of a coin: the gambler's wealth grows exactly when its bets
predict the "coin" (here, the Stein direction), and the bet is a fraction of that wealth.
Sharrock & Nemeth (2023) apply it to the particles of SVGD.  With ``c_t = phi(x_t)`` the
Stein direction at step ``t`` and ``x_0`` the starting particles, every coordinate of
every particle keeps four running quantities

* ``L_t = max(L_{t-1}, |c_t|)``: the largest "coin" seen (a running Lipschitz constant),
* ``S_t = sum_{s<=t} c_s`` and ``G_t = sum_{s<=t} |c_s|``,
* the reward ``R_t = max(R_{t-1} + c_t (x_t - x_0), 0)`` (the gambler's winnings),

and moves to (their adaptive Coin SVGD, in the form of Orabona & Tommasi's COCOB)

    ``x_{t+1} = x_0 + S_t / (L_t (G_t + L_t)) * (L_t + R_t)``.

The step is set by the history of ``c``: no learning rate.  The first step is half of
``sign(c_1)`` in every coordinate (``S / (L (G + L)) * L = c / (2 |c|)``), so start the
particles at a scale where moves of order one are sensible (standardize the parameters).

References:
    Sharrock & Nemeth, *Coin Sampling: Gradient-Based Bayesian Inference without Learning
    Rates* (ICML 2023), Algorithm 2 (Coin SVGD) and its adaptive form.
    Orabona & Tommasi, *Training Deep Networks without Learning Rates Through Coin Betting*
    (NeurIPS 2017), Algorithm 2 (COCOB-Backprop).
    Orabona & Pal, *Coin Betting and Parameter-Free Online Learning* (NeurIPS 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .svgd import ParticleMethod, Preconditioner

__all__ = ["CoinSVGD"]


class CoinSVGD(ParticleMethod):
    """Coin Stein variational gradient descent: SVGD without a learning rate.

    Args:
        log_prob: ``x [n, D] -> [n]``, the target's log-density up to a constant (possibly a
            stochastic minibatch estimate).
        particles: ``[n, D]`` starting particles ``x_0`` (tensor or `Particles`).
        bandwidth, preconditioner: as for `vitorch.particles.SVGD`.
        initial_scale: ``L_0``, the starting value of the running maximum ``L`` (a tiny
            positive number; it keeps ``0 / 0`` out of coordinates whose direction is
            exactly zero).

    Attributes:
        x0: ``[n, D]`` the starting particles.
        L, S, G, R: ``[n, D]`` the running maximum of ``|c|``, sum of ``c``, sum of ``|c|``
            and the reward.

    Raises:
        ValueError: if ``initial_scale`` is not positive and finite, and as `ParticleMethod`.

    Example:
        >>> target = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> q = CoinSVGD(target.log_prob, torch.randn(50, 2)).run(500)

    References:
        Sharrock & Nemeth, *Coin Sampling* (ICML 2023), Algorithm 2 and sec. 4.
    """

    def __init__(
        self,
        log_prob: Callable[..., Tensor],
        particles,
        *,
        bandwidth: float | None = None,
        preconditioner: Preconditioner = None,
        initial_scale: float = 1e-10,
    ):
        super().__init__(log_prob, particles, bandwidth, preconditioner)
        if (
            isinstance(initial_scale, bool)
            or not isinstance(initial_scale, int | float)
            or not math.isfinite(initial_scale)
            or initial_scale <= 0
        ):
            raise ValueError(f"CoinSVGD: initial_scale must be a positive finite number; got {initial_scale!r}")
        self.x0 = self.x.clone()
        self.L = torch.full_like(self.x, float(initial_scale))
        self.S = torch.zeros_like(self.x)
        self.G = torch.zeros_like(self.x)
        self.R = torch.zeros_like(self.x)

    def step(self, *args, **kwargs) -> Tensor:
        """One coin-betting step; extra arguments go to ``log_prob`` (e.g. a minibatch).

        Returns:
            0-d the particles' mean ``log p`` before the move (detached), to monitor.
        """
        c, lp = self.direction(*args, **kwargs)
        with torch.no_grad():
            self.L = torch.maximum(self.L, c.abs())
            self.S = self.S + c
            self.G = self.G + c.abs()
            self.R = (self.R + c * (self.x - self.x0)).clamp_min(0.0)
            self.x.copy_(self.x0 + self.S / (self.L * (self.G + self.L)) * (self.L + self.R))
        self.num_steps += 1
        return lp.mean()
