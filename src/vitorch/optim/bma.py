"""Bayesian model averaging over the weight posterior an optimizer such as IVON has learned."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["bma_predict"]


def _softmax(logits: Tensor) -> Tensor:
    return torch.softmax(logits, dim=-1)


@torch.no_grad()
def bma_predict(
    module: nn.Module,
    optimizer,
    x,
    samples: int = 32,
    probs_fn: Callable[[Tensor], Tensor] = _softmax,
    generator: torch.Generator | None = None,
) -> Tensor:
    """The posterior predictive ``p(y | x) ≈ (1/S) Σ_s p(y | x, θ_s)``, ``θ_s ~ q``.

    Each of the ``samples`` draws is put into the module's parameters with
    ``optimizer.sampled_params()`` (`vitorch.optim.IVON`, or any optimizer offering
    that context); the module runs in whatever mode it is in (call ``module.eval()``
    first for dropout or batch norm) and its parameters hold the mean again afterwards.

    Args:
        module: maps ``x`` to logits ``[N, C]`` (any ``[*, C]``).
        optimizer: the optimizer holding the posterior.
        x: the module's input.
        samples: number of draws ``S >= 1``.
        probs_fn: logits to probabilities; default softmax over the last dimension
            (``torch.sigmoid`` for a binary model with one logit).
        generator: draw the weight noise from this generator, leaving the
            optimizer's own stream (and so the rest of training) untouched.

    Returns:
        The averaged probabilities, shaped like ``probs_fn(module(x))``.

    Raises:
        TypeError: if ``optimizer`` has no ``sampled_params`` or ``samples`` is not an int.
        ValueError: if ``samples < 1``.

    References:
        Shen et al., *Variational Learning is Effective for Large Deep Networks* (ICML 2024): IVON's
        predictions average the softmax outputs over posterior draws.
    """
    if not callable(getattr(optimizer, "sampled_params", None)):
        raise TypeError(
            "bma_predict: optimizer must offer sampled_params() (e.g. vitorch.optim.IVON); "
            f"got {type(optimizer).__name__}"
        )
    if isinstance(samples, bool) or not isinstance(samples, int):
        raise TypeError(f"bma_predict: samples must be an int; got {type(samples).__name__} {samples!r}")
    if samples < 1:
        raise ValueError(f"bma_predict: samples must be >= 1; got {samples}")
    total = None
    for _ in range(samples):
        with optimizer.sampled_params(train=False, generator=generator):
            probs = probs_fn(module(x))
        total = probs if total is None else total.add_(probs)
    return total.div_(samples)
