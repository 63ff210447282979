"""Simulated training pairs: a prior, a batched simulator and ``simulate``.

A simulation-based inference problem is two things a user writes: a prior over the
parameters (any torch distribution with event shape ``[D]``, e.g. `box_uniform`, or a
``MultivariateNormal``) and a simulator that maps a batch of parameters
``theta [n, D]`` to a batch of data ``x [n, *x_shape]``.  `simulate` draws
``theta ~ prior`` and runs the simulator on it, in chunks if asked.

References:
    Cranmer, Brehmer & Louppe, *The frontier of simulation-based inference* (PNAS 2020).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Uniform

__all__ = ["simulate", "box_uniform", "check_prior"]


def box_uniform(low, high) -> Distribution:
    """The uniform prior on the box ``[low_1, high_1] x ... x [low_D, high_D]``.

    Args:
        low: ``[D]`` lower corners (a tensor or a sequence of numbers).
        high: ``[D]`` upper corners, each above its ``low``.

    Returns:
        ``Independent(Uniform(low, high), 1)``: event shape ``[D]``, support the open box.

    Raises:
        ValueError: if the corners are not vectors of one length or some ``high <= low``.

    References:
        Tejero-Cantero et al., *sbi: A toolkit for simulation-based inference* (JOSS 2020) (``BoxUniform``).
    """
    low = torch.as_tensor(low, dtype=torch.get_default_dtype())
    high = torch.as_tensor(high, dtype=torch.get_default_dtype())
    if low.dim() != 1 or low.shape != high.shape:
        raise ValueError(
            f"box_uniform: low and high must be vectors of one length; got {tuple(low.shape)}, {tuple(high.shape)}"
        )
    if not bool((high > low).all()):
        raise ValueError(
            f"box_uniform: need high > low in every dimension; got low={low.tolist()}, high={high.tolist()}"
        )
    return Independent(Uniform(low, high), 1)


def check_prior(prior) -> int:
    """The parameter dimension ``D`` of ``prior``, after checking it can serve as a prior.

    Raises:
        TypeError: if ``prior`` is not a torch ``Distribution``.
        ValueError: if its event shape is not ``[D]`` or it has a batch shape.

    References:
        Papamakarios & Murray, *Fast epsilon-free Inference of Simulation Models with Bayesian
        Conditional Density Estimation* (NeurIPS 2016): the prior over parameters ``[D]``.
    """
    if not isinstance(prior, Distribution):
        raise TypeError(f"prior must be a torch.distributions.Distribution; got {type(prior).__name__}")
    if len(prior.event_shape) != 1 or prior.event_shape[0] < 1:
        raise ValueError(
            f"prior must have event shape [D] with D >= 1 (wrap scalar priors in Independent or give a "
            f"vector); got event shape {tuple(prior.event_shape)}"
        )
    if len(prior.batch_shape) != 0:
        raise ValueError(f"prior must have no batch shape; got batch shape {tuple(prior.batch_shape)}")
    return int(prior.event_shape[0])


def simulate(
    prior: Distribution,
    simulator: Callable[[Tensor], Tensor],
    n: int,
    *,
    chunk_size: int | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``theta ~ prior`` and run the batched ``simulator`` on it.

    Args:
        prior: a torch distribution with event shape ``[D]`` (any proposal works too,
            e.g. a `vitorch.sbi.NPEPosterior` for the later rounds of sequential NPE).
        simulator: ``theta [m, D] -> x [m, *x_shape]``, one simulation per row.
        n: the number of simulations.
        chunk_size: call the simulator on at most this many rows at a time (default: all).
        seed: seed for this call's draws (prior and simulator); the global torch RNG is
            left as it was.  Default: use the global RNG.

    Returns:
        ``theta [n, D]`` and ``x [n, *x_shape]``.

    Raises:
        TypeError: for a prior that is not a distribution or a simulator that is not callable
            or does not return a tensor.
        ValueError: for ``n < 1``, a simulator output whose first dimension is not the
            number of parameter rows, or non-finite simulations (their count is named).

    Example:
        >>> prior = box_uniform([-1.0, -1.0], [1.0, 1.0])
        >>> theta, x = simulate(prior, lambda t: t + 0.1 * torch.randn_like(t), 500)

    References:
        Cranmer, Brehmer & Louppe, *The frontier of simulation-based inference* (PNAS 2020).
    """
    check_prior(prior)
    if not callable(simulator):
        raise TypeError(f"simulator must be callable (theta [n, D] -> x [n, ...]); got {type(simulator).__name__}")
    for name, v in (("n", n), ("chunk_size", chunk_size)):
        if v is None and name == "chunk_size":
            continue
        if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
            raise ValueError(f"simulate: {name} must be an integer >= 1; got {v!r}")
    with torch.random.fork_rng(enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        with torch.no_grad():
            theta = prior.sample((n,))
            chunks = theta.split(chunk_size or n)
            xs = [_run(simulator, t) for t in chunks]
    x = torch.cat(xs) if len(xs) > 1 else xs[0]
    bad = ~torch.isfinite(x.reshape(n, -1)).all(-1)
    if bool(bad.any()):
        raise ValueError(
            f"simulate: the simulator returned non-finite values for {int(bad.sum())} of {n} parameter rows "
            f"(first at row {int(bad.nonzero()[0])}); drop them or fix the simulator"
        )
    return theta, x


def _run(simulator: Callable[[Tensor], Tensor], theta: Tensor) -> Tensor:
    x = simulator(theta)
    if not isinstance(x, Tensor):
        raise TypeError(f"simulator must return a tensor [n, ...]; got {type(x).__name__}")
    if x.dim() == 0 or x.shape[0] != theta.shape[0]:
        raise ValueError(
            f"simulator must return one simulation per parameter row: theta {tuple(theta.shape)} gave x "
            f"{tuple(x.shape)}"
        )
    return x
