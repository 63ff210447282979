"""Sequential NPE (SNPE-C / APT): rounds of simulations focused on one observation.

Round 1 draws parameters from the prior and fits by maximum likelihood.  Each later
round draws from the current posterior at the observation ``x_o``, simulates, and
refits on *all* pairs so far with the atomic loss of Greenberg et al. (2019), which
corrects for the proposals: with atoms drawn from the batch, the proposal posterior
``q~(theta | x) ∝ q(theta | x) / p(theta)`` over the atoms is consistent for
``p(theta | x)`` whatever the proposals were.  The flow is trained on, not restarted.

References:
    Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
    likelihood-free inference* (ICML 2019), Algorithm 1.
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016) (sequential proposals).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor

from ..training import History
from .simulate import simulate

__all__ = ["sequential_npe"]


def sequential_npe(
    npe,
    simulator: Callable[[Tensor], Tensor],
    x_o: Tensor,
    *,
    rounds: int,
    simulations_per_round: int,
    num_atoms: int = 10,
    seed: int | None = None,
    **train_kwargs,
) -> list[History]:
    """Run ``rounds`` rounds of SNPE-C (APT) for the observation ``x_o``.

    Args:
        npe: a `vitorch.sbi.NPE` (fresh, or trained on prior simulations already).
        simulator: ``theta [n, D] -> x [n, *x_shape]``.
        x_o: the observation ``[*x_shape]``.
        rounds: number of rounds (1 is plain NPE).
        simulations_per_round: simulations drawn in each round.
        num_atoms: atoms per datum of the atomic loss (rounds 2 and later).
        seed: seed of the simulations and of each round's training (round ``r`` uses
            ``seed + r``); default the global RNG.
        **train_kwargs: passed to `vitorch.sbi.train_npe` (batch size, patience, ...).

    Returns:
        The `vitorch.training.History` of each round.  Afterwards ``npe.posterior(x_o)``
        is the focused posterior; it is no longer amortized over other ``x``.

    Raises:
        ValueError: for ``rounds`` or ``simulations_per_round`` below 1, or ``x_o`` whose
            shape is not ``x_shape``.

    References:
        Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
        likelihood-free inference* (ICML 2019), Algorithm 1.
    """
    for name, v in (("rounds", rounds), ("simulations_per_round", simulations_per_round)):
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"sequential_npe: {name} must be an integer >= 1; got {v!r}")
    if not isinstance(x_o, Tensor) or tuple(x_o.shape) != tuple(npe.x_shape):
        got = tuple(x_o.shape) if isinstance(x_o, Tensor) else type(x_o).__name__
        raise ValueError(f"sequential_npe: x_o must have shape {tuple(npe.x_shape)} (one observation); got {got}")
    thetas, xs, histories = [], [], []
    for r in range(rounds):
        proposal = npe.prior if r == 0 else npe.posterior(x_o)
        round_seed = None if seed is None else seed + r
        theta, x = simulate(proposal, simulator, simulations_per_round, seed=round_seed)
        thetas.append(theta)
        xs.append(x)
        loss = "mle" if r == 0 else "atomic"
        histories.append(
            npe.fit(torch.cat(thetas), torch.cat(xs), loss=loss, num_atoms=num_atoms, seed=round_seed, **train_kwargs)
        )
    return histories
