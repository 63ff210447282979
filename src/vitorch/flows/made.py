"""MADE: a masked multilayer perceptron whose outputs for dimension ``i`` see only
the inputs that precede ``i`` in a chosen order (Germain et al., 2015).

It is the conditioner of :class:`~vitorch.flows.MAF` and :class:`~vitorch.flows.IAF`:
one network pass yields every dimension's parameters, and the masks make the
Jacobian of the flow triangular (in the chosen order).  A context is concatenated to
the inputs with degree 0, so every unit may read it.

References:
    Germain, Gregor, Murray & Larochelle, MADE: Masked Autoencoder for Distribution
    Estimation (ICML 2015).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .base import check_features

__all__ = ["MADE", "MaskedLinear"]


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight is multiplied by a fixed 0/1 mask ``[out, in]``."""

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer("mask", mask.to(self.weight.dtype))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """Autoregressive conditioner ``x [*shape, D] (+ context) -> params [*shape, D, P]``.

    Args:
        dim: ``D``.
        num_params: ``P`` outputs per dimension.
        hidden: hidden widths (each should be ``>= D - 1`` so every input can reach
            every later output).
        context_features: ``C`` extra inputs every unit may read.
        order: a permutation of ``range(D)``: the autoregressive order
            (``order[0]`` is the first dimension, depending on nothing but the context).
    """

    def __init__(
        self,
        dim: int,
        num_params: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        order: Sequence[int] | None = None,
    ):
        super().__init__()
        self.dim = check_features("dim", dim)
        self.num_params = check_features("num_params", num_params)
        self.context_features = check_features("context_features", context_features, 0)
        order = list(range(dim)) if order is None else [int(i) for i in order]
        if sorted(order) != list(range(dim)):
            raise ValueError(f"MADE: order must be a permutation of range({dim}); got {order}")
        self.register_buffer("order", torch.tensor(order), persistent=False)
        rank = torch.empty(dim, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(1, dim + 1)
        # Degrees: context 0, inputs 1..D by rank, hidden units cycle through 1..D-1.
        in_deg = torch.cat([torch.zeros(context_features, dtype=torch.long), rank])
        layers: list[nn.Module] = []
        prev = in_deg
        for h in hidden:
            deg = torch.arange(check_features("hidden width", h)) % max(dim - 1, 1) + 1
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), nn.ELU()]
            prev = deg
        out_deg = rank.repeat_interleave(num_params)
        layers.append(MaskedLinear(out_deg[:, None] > prev[None, :]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        if self.context_features:
            if context is None:
                raise ValueError(f"MADE is conditional (context_features={self.context_features}); pass context")
            if context.shape[-1] != self.context_features:
                raise ValueError(
                    f"context must end in context_features={self.context_features}; got shape {tuple(context.shape)}"
                )
            shape = torch.broadcast_shapes(context.shape[:-1], x.shape[:-1])
            x = torch.cat([context.expand(*shape, -1), x.expand(*shape, -1)], -1)
        return self.net(x).unflatten(-1, (self.dim, self.num_params))
