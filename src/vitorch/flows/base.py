"""Building blocks shared by vitorch's transforms: parameter networks and row-blocked evaluation.

The `Transform` interface itself (with `NoInverseError` and
`check_features`) is defined beside `vitorch.Flow` in
`vitorch.families.transform`, so the flow family depends on nothing here; it is
re-exported under its old names ``vitorch.flows.base.Transform`` and ``vitorch.flows.Transform``.

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (2015).
    Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (2021).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from .._autocast import full_precision
from ..families.transform import NoInverseError, Transform, check_features

__all__ = ["Transform", "NoInverseError", "ParamNet", "mlp", "check_features", "by_row_blocks"]


def by_row_blocks(
    fn: Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]], v: Tensor, context: Tensor | None, rows: int
) -> tuple[Tensor, Tensor]:
    """``fn(v, context)`` evaluated on blocks of at most ``rows`` rows of ``v``'s first dimension.

    A transform's intermediates (hidden activations, spline tables) are many times the
    size of its input; on a large batch each one is a fresh allocation (with page
    faults) that falls out of the cache before the next operation reads it.  Row
    blocks keep them cache-sized; the results are the same rows, concatenated.  The
    context is split alongside when its leading dimension is ``v``'s; when it
    broadcasts against ``v`` (fewer dimensions, or size 1) it is passed whole, and
    anything else is evaluated in one piece.

    Args:
        fn: ``(v [n, *, D], context) -> (out [n, *, D], ladj [n, *])``.
        v: ``[N, *, D]``.
        context: ``[*batch, C]`` or ``None``.
        rows: block size, counted in ``D``-vectors (each block takes ``rows // prod(*)``
            entries of the first dimension, at least one).

    Returns:
        ``out [N, *, D]`` and ``ladj [N, *]``.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
    """
    n = v.shape[0] if v.dim() >= 2 else 0
    split_context = False
    if context is not None and context.dim() > v.dim():
        n = 0  # v broadcasts against the context: no common leading rows to split
    elif context is not None and context.dim() == v.dim():
        if context.shape[0] == n:
            split_context = True
        elif context.shape[0] != 1:
            n = 0
    rows = max(1, rows // math.prod(v.shape[1:-1]))  # rows of the first dimension per block
    if n <= rows:
        return fn(v, context)
    blocks = v.split(rows, 0)
    contexts = context.split(rows, 0) if split_context else [context] * len(blocks)
    results = [fn(b, c) for b, c in zip(blocks, contexts)]
    return torch.cat([r[0] for r in results], 0), torch.cat([r[1] for r in results], 0)


def mlp(in_features: int, hidden: Sequence[int], out_features: int) -> nn.Sequential:
    """A plain multilayer perceptron with ELU activations (smooth, so Jacobians are well defined)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, check_features("hidden width", h)), nn.ELU()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class ParamNet(nn.Module):
    """The raw parameters of a transform: a free vector, or a hypernetwork of the context.

    Args:
        num_params: ``P``, the length of the raw parameter vector.
        context_features: ``C``; ``0`` makes the parameters free ``nn.Parameter`` s.
        hidden: hidden widths of the hypernetwork ``[*batch, C] -> [*batch, P]``.
        init_std: standard deviation of the initial free parameters (and of the
            hypernetwork's output bias), small so a new flow starts near the identity.

    Calling it with ``context`` returns ``[*batch, P]`` (or ``[P]`` when unconditional).

    References:
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow
        (NeurIPS 2016): flow parameters emitted by an encoder's network.
    """

    def __init__(
        self, num_params: int, context_features: int = 0, hidden: Sequence[int] = (64,), init_std: float = 0.1
    ):
        super().__init__()
        self.num_params = num_params
        self.context_features = check_features("context_features", context_features, 0)
        if self.context_features == 0:
            self.params = nn.Parameter(init_std * torch.randn(num_params))
        else:
            self.net = mlp(self.context_features, hidden, num_params)
            last = self.net[-1]
            with torch.no_grad():
                last.weight.mul_(0.1)
                last.bias.normal_(0.0, init_std)

    def forward(self, context: Tensor | None = None) -> Tensor:
        if self.context_features == 0:
            return self.params
        if context is None:
            raise ValueError(f"this transform is conditional (context_features={self.context_features}); pass context")
        if context.shape[-1] != self.context_features:
            raise ValueError(
                f"context must end in context_features={self.context_features}; got shape {tuple(context.shape)}"
            )
        return full_precision(self.net(context))  # autocast: the map's parameters in float32
