"""Fitting `vitorch.sbi.NPE` with `vitorch.fit`: the held-out split, early stopping and
the loss of each round, and sequential NPE (SNPE-C / APT).

`train_npe` checks the simulations, sets the z-scoring statistics on the first call,
holds out a validation fraction and runs `vitorch.fit` with per-epoch evaluation,
``patience`` epochs of early stopping on the held-out ``log q`` and the best weights
restored at the end -- the schedule of Papamakarios & Murray (2016) and of the
``sbi`` package, so budgets compare.

`sequential_npe` focuses simulations on one observation: round 1 draws parameters
from the prior and fits by maximum likelihood; each later round draws from the current
posterior at ``x_o``, simulates, and refits on *all* pairs so far with the atomic loss
of Greenberg et al. (2019), which corrects for the proposals: with atoms drawn from the
batch, the proposal posterior ``q~(theta | x) ∝ q(theta | x) / p(theta)`` over the atoms
is consistent for ``p(theta | x)`` whatever the proposals were.  The flow is trained
on, not restarted.

References:
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016).
    Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
    likelihood-free inference* (ICML 2019), Algorithm 1.
    Prechelt, *Early Stopping - But When?* (Neural Networks: Tricks of the Trade, 1998).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping

import torch
import torch.distributed as dist
from torch import Tensor

from ..training import History, fit
from .simulate import simulate

__all__ = ["train_npe", "sequential_npe"]


def _agreed_seed(seed: int | None) -> int | None:
    """``seed``, or under a process group of several ranks rank 0's draw from its global stream.

    Data-parallel ranks must hold out and simulate the same pairs, but their global streams
    differ once `vitorch.fit` has reseeded ranks above 0.
    """
    if seed is not None or not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return seed
    shared = [int(torch.randint(2**62, ()).item())]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def _check_pairs(npe, theta: Tensor, x: Tensor) -> None:
    if not isinstance(theta, Tensor) or not isinstance(x, Tensor):
        raise TypeError(f"theta and x must be tensors; got {type(theta).__name__} and {type(x).__name__}")
    if theta.dim() != 2 or theta.shape[1] != npe.dim:
        raise ValueError(f"theta must be [N, D] with D={npe.dim} (the prior's event size); got {tuple(theta.shape)}")
    if tuple(x.shape[1:]) != tuple(npe.x_shape) or x.shape[0] != theta.shape[0]:
        raise ValueError(
            f"x must be [N, *x_shape] = [{theta.shape[0]}, {', '.join(map(str, npe.x_shape))}] to match theta "
            f"{tuple(theta.shape)}; got {tuple(x.shape)}"
        )
    if not bool(torch.isfinite(theta).all()) or not bool(torch.isfinite(x).all()):
        raise ValueError("theta and x must be finite (drop failed simulations before training)")
    inside = npe.prior.support.check(theta)
    if not bool(inside.all()):
        raise ValueError(
            f"theta: {int((~inside).sum())} rows lie outside the prior's support {npe.prior.support} "
            f"(first at row {int((~inside).nonzero()[0])})"
        )


def train_npe(
    npe,
    theta: Tensor,
    x: Tensor,
    *,
    loss: str = "mle",
    num_atoms: int = 10,
    fisher_penalty: float = 0.0,
    validation_fraction: float = 0.1,
    batch_size: int = 200,
    lr: float = 5e-4,
    max_epochs: int = 1000,
    patience: int = 20,
    clip_grad_norm: float | None = 5.0,
    seed: int | None = None,
    compile: bool | Mapping = False,
    **fit_kwargs,
) -> History:
    """Fit ``npe`` to simulated pairs by maximum likelihood (or APT's atomic loss).

    Args:
        npe: the `vitorch.sbi.NPE` to train (in place; calling again continues from its weights).
        theta: ``[N, D]`` parameters (inside the prior's support).
        x: ``[N, *x_shape]`` their simulations.
        loss: ``"mle"``, ``-log q(theta | x)`` (for pairs drawn from the prior), or
            ``"atomic"``, APT's ``-log q~(theta | x)`` over ``num_atoms`` atoms (for pairs
            drawn from any proposal, e.g. the later rounds of sequential NPE).
        num_atoms: atoms per datum for the atomic loss (capped at the batch size).
        fisher_penalty: ``beta >= 0``, the weight of the Fisher-information penalty of
            Gloeckler et al. (2023) (0: none).
        validation_fraction: the share of pairs held out for early stopping (in
            ``(0, 1)``); at least one pair is held out.
        batch_size: training batch size.
        lr: Adam's learning rate.
        max_epochs: the most epochs to run.
        patience: stop after this many epochs without a better held-out ``log q``; the
            best weights are restored.
        clip_grad_norm: clip the gradients' 2-norm to this (``None``: no clipping).
        seed: seed of the split, the data order and the initial atoms (default: the global RNG;
            under a process group, rank 0's draw from it, shared by every rank).
        compile: ``True`` (or a dict of ``torch.compile`` options) trains through a
            compiled forward (`vitorch.fit`'s ``compile``): Inductor fuses the flow's
            elementwise work and its backward, which on a CPU makes an epoch of a small
            MAF about a quarter to a third cheaper.  Compiling costs seconds, once per
            batch shape (a short last batch compiles again), so it pays only when the run
            has many epochs or many simulations.
        **fit_kwargs: passed to `vitorch.fit` (e.g. ``log_dir``, ``progress``, ``callbacks``).

    Returns:
        `vitorch.training.History` of the run (``bound`` is the mean ``log q`` per datum).

    Raises:
        ValueError: for shapes that do not match the prior and ``x_shape``, non-finite
            pairs, parameters outside the prior's support, or a bad option (each named).

    References:
        Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
        conditional density estimation* (NeurIPS 2016);
        Greenberg, Nonnenmacher & Macke, *Automatic posterior transformation for
        likelihood-free inference* (ICML 2019);
        Gloeckler, Deistler & Macke, *Adversarial robustness of amortized Bayesian inference* (ICML 2023).
    """
    _check_pairs(npe, theta, x)
    problems = []
    if loss not in ("mle", "atomic"):
        problems.append(f"loss must be 'mle' or 'atomic'; got {loss!r}")
    if isinstance(num_atoms, bool) or not isinstance(num_atoms, numbers.Integral) or num_atoms < 2:
        problems.append(f"num_atoms must be an integer >= 2; got {num_atoms!r}")
    if not isinstance(fisher_penalty, numbers.Real) or not 0 <= fisher_penalty < float("inf"):
        problems.append(f"fisher_penalty must be a finite number >= 0; got {fisher_penalty!r}")
    if not isinstance(validation_fraction, numbers.Real) or not 0 < validation_fraction < 1:
        problems.append(f"validation_fraction must be in (0, 1); got {validation_fraction!r}")
    n = theta.shape[0]
    if n < 2:
        problems.append(f"need at least 2 simulations (one to train on, one held out); got {n}")
    if problems:
        raise ValueError("train_npe:\n  - " + "\n  - ".join(problems))
    if not bool(npe.standardized):
        npe.set_standardization(theta, x)
    seed = _agreed_seed(seed)
    n_val = min(n - 1, max(1, round(validation_fraction * n)))
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    perm = torch.randperm(n, generator=gen).to(theta.device)
    val, tr = perm[:n_val], perm[n_val:]
    npe.loss_kind, npe.num_atoms, npe.fisher_penalty = loss, int(num_atoms), float(fisher_penalty)
    fit_kwargs.setdefault("progress", False)
    # One held-out batch: cheaper than many small ones, and never a single-row atomic batch.
    fit_kwargs.setdefault("eval_batch_size", n_val)
    # The atomic loss contrasts rows within a batch: never leave a batch of one row.
    drop_last = loss == "atomic" and len(tr) > batch_size and len(tr) % batch_size == 1
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        return fit(
            npe,
            (theta[tr], x[tr]),
            epochs=max_epochs,
            batch_size=batch_size,
            lr=lr,
            eval_data=(theta[val], x[val]),
            patience=patience,
            restore_best=True,
            clip_grad_norm=clip_grad_norm,
            seed=seed,
            drop_last=drop_last,
            compile=compile,
            **fit_kwargs,
        )


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
            ``seed + r``); default the global RNG (under a process group, rank 0's draw from it).
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
    seed = _agreed_seed(seed)
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
