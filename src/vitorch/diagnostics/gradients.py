"""Gradient noise: the signal-to-noise ratio of a stochastic gradient over repeated draws.

References:
    Rainforth et al., Tighter Variational Bounds are Not Necessarily Better (ICML 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

__all__ = ["gradient_snr", "GradientSNR"]


@dataclass(frozen=True)
class GradientSNR:
    """Per-element moments of a stochastic gradient over repeated draws (see `gradient_snr`).

    Attributes:
        names: one name per parameter (``nn.Module`` parameter names, else ``"params[i]"``).
        mean: per parameter, the mean gradient, shaped like the parameter.
        variance: per parameter, the unbiased variance of the gradient (divisor ``num_draws - 1``).
        num_draws: how many gradients were drawn.

    References:
        Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, *Tighter Variational Bounds are Not
        Necessarily Better* (ICML 2018).
    """

    names: tuple[str, ...]
    mean: tuple[Tensor, ...]
    variance: tuple[Tensor, ...]
    num_draws: int

    @property
    def snr(self) -> tuple[Tensor, ...]:
        """``|mean| / std`` per element; ``0`` where the gradient is exactly zero on every draw,
        ``inf`` where it is nonzero and constant."""
        out = []
        for m, v in zip(self.mean, self.variance):
            ratio = m.abs() / v.sqrt()
            out.append(torch.where((m == 0) & (v == 0), 0.0, ratio))
        return tuple(out)

    @property
    def standard_error(self) -> tuple[Tensor, ...]:
        """Standard error of each `mean` element, ``sqrt(variance / num_draws)``."""
        return tuple((v / self.num_draws).sqrt() for v in self.variance)

    @property
    def mean_snr(self) -> float:
        """Average of `snr` over every element of every parameter."""
        return torch.cat([s.flatten() for s in self.snr]).mean().item()

    @property
    def total_variance(self) -> float:
        """Sum of the per-element variances: the trace of the gradient's covariance."""
        return sum(v.sum().item() for v in self.variance)


def _named_params(params: Iterable[Tensor] | nn.Module) -> tuple[tuple[str, ...], list[Tensor]]:
    if isinstance(params, nn.Module):
        pairs = [(n, p) for n, p in params.named_parameters() if p.requires_grad]
    elif isinstance(params, Tensor):
        pairs = [("params[0]", params)]
    else:
        pairs = [(f"params[{i}]", p) for i, p in enumerate(params)]
    if not pairs:
        raise ValueError("params must hold at least one tensor that requires grad; got none")
    for name, p in pairs:
        if not isinstance(p, Tensor) or not p.requires_grad:
            raise ValueError(f"params: {name} must be a tensor with requires_grad=True; got {type(p).__name__}")
    return tuple(n for n, _ in pairs), [p for _, p in pairs]


def gradient_snr(loss_fn: Callable[[], Tensor], params: Iterable[Tensor] | nn.Module, num_draws: int) -> GradientSNR:
    """Signal-to-noise ratio of a stochastic gradient, ``|E[g]| / std(g)`` per element.

    Calls ``loss_fn()`` ``num_draws`` times, takes ``torch.autograd.grad`` of each
    scalar with respect to ``params`` (never ``backward``, so ``.grad`` is left as it
    was), and accumulates the mean and variance in float64 with Welford's update, so
    memory does not grow with ``num_draws``.  A parameter the loss does not reach has
    a zero gradient.  Rainforth et al. (2018) show with this measure that the IWAE
    guide gradient's SNR falls as ``O(1 / sqrt(K))``.

    Args:
        loss_fn: builds and returns a fresh scalar loss on each call, including
            the family from the parameters, e.g.
            ``lambda: vt.loss(log_joint, DiagNormal(loc, log_scale.exp()), 8, vt.objectives.iwae,
            vt.estimators.dreg).loss``.
        params: tensors with ``requires_grad=True``, or an ``nn.Module`` (its trainable parameters).
        num_draws: how many gradients to draw, at least 2.

    Returns:
        `GradientSNR` with per-element mean, variance and SNR and their summaries.

    Raises:
        ValueError: for ``num_draws < 2``, no trainable ``params``, a ``loss_fn`` that does
            not return a scalar attached to the graph, or a non-finite gradient.

    References:
        Rainforth et al., Tighter Variational Bounds are Not Necessarily Better (2018).
    """
    if isinstance(num_draws, bool) or not isinstance(num_draws, int) or num_draws < 2:
        raise ValueError(f"num_draws must be an integer >= 2 (a variance needs two draws); got {num_draws!r}")
    names, tensors = _named_params(params)
    mean = [torch.zeros_like(p, dtype=torch.float64) for p in tensors]
    m2 = [torch.zeros_like(p, dtype=torch.float64) for p in tensors]
    for i in range(num_draws):
        loss = loss_fn()
        if not isinstance(loss, Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
            raise ValueError(f"loss_fn must return a scalar tensor; got {shape}")
        if not loss.requires_grad:
            raise ValueError("loss_fn returned a tensor with no graph: it does not depend on params")
        try:
            grads = torch.autograd.grad(loss, tensors, allow_unused=True)
        except RuntimeError as err:
            if "second time" not in str(err):
                raise
            raise ValueError(
                "loss_fn reuses a graph that an earlier draw already freed; build everything "
                "derived from params (e.g. the family q) inside loss_fn"
            ) from err
        for name, p, g, mu, acc in zip(names, tensors, grads, mean, m2):
            g = torch.zeros_like(p, dtype=torch.float64) if g is None else g.detach().double()
            if not bool(torch.isfinite(g).all()):
                raise ValueError(f"loss_fn gave a non-finite gradient for {name} at draw {i}")
            delta = g - mu
            mu += delta / (i + 1)
            acc += delta * (g - mu)
    return GradientSNR(
        names=names,
        mean=tuple(mu.to(p.dtype) for mu, p in zip(mean, tensors)),
        variance=tuple((acc / (num_draws - 1)).to(p.dtype) for acc, p in zip(m2, tensors)),
        num_draws=num_draws,
    )
