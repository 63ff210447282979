"""``ConditionalFlow``: the module that owns a flow's parameters and returns the family.

Following zuko, parameters live in modules and distributions are cheap values that a
module *returns*: ``module(context) -> Flow``.  For an amortized posterior the encoder
emits features ``[B, C]`` and ``ConditionalFlow(...)(features)`` is a flow with batch
shape ``[B]``; without a context (``context_features = 0`` in every transform) the same
module gives an unconditional flow, ``module()``.

Example:
    >>> D, C = 2, 16
    >>> flow = ConditionalFlow([IAF(D, context_features=C), IAF(D, context_features=C, order=[1, 0])])
    >>> q = flow(features)                              # features [B, C] -> Flow, batch [B]
    >>> out = vt.loss(log_joint, q, num_particles=8, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .base import Transform

__all__ = ["ConditionalFlow"]


class ConditionalFlow(nn.Module):
    """A stack of (conditional) transforms on a standard normal base.

    Args:
        transforms: :class:`~vitorch.flows.Transform` modules, base side first.
            Put an :class:`~vitorch.flows.ElementwiseAffine` first for a learned
            Gaussian starting point.
        dim: event size ``D`` (default: the first transform's).

    Calling it with ``context [*batch, C]`` (or nothing) returns a :class:`~vitorch.Flow`.

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015);
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow
        (NeurIPS 2016), sec. 4 (amortized flows).
    """

    def __init__(self, transforms: Sequence[Transform], dim: int | None = None):
        super().__init__()
        transforms = list(transforms)
        if dim is None:
            if not transforms:
                raise ValueError("ConditionalFlow: give dim when there are no transforms")
            dim = transforms[0].dim
        self.dim = dim
        self.transforms = nn.ModuleList(transforms)
        # Buffers, so the base follows .to(dtype / device) with the transforms.
        self.register_buffer("base_loc", torch.zeros(dim), persistent=False)
        self.register_buffer("base_scale", torch.ones(dim), persistent=False)

    def forward(self, context: Tensor | None = None):
        """``context [*batch, C]`` (or ``None``) -> :class:`~vitorch.Flow` with batch shape ``[*batch]``."""
        # Imported here: vitorch.families.flow imports this package, so a top-level
        # import would be circular whichever package is imported first.
        from ..families.flow import Flow
        from ..families.gaussian import DiagNormal

        base = DiagNormal(self.base_loc, self.base_scale, validate_args=False)
        return Flow(base, list(self.transforms), context)
