"""The conditional flows NPE fits: masked autoregressive flows with affine or spline maps.

``"maf"`` stacks affine MAF transforms (Papamakarios et al., 2017), ``"nsf"`` the same
with monotone rational-quadratic splines (the autoregressive neural spline flow of
Durkan et al., 2019).  Each transform has its own autoregressive order (the first
the identity, the others fixed pseudo-random permutations that depend only on the
layer's index, so a rebuilt model loads a saved state), which plays the part of the
permutation layers between transforms.  ``log q`` is one MADE pass per transform.

The affine maps of ``"maf"`` take their scale from a softplus (`vitorch.flows.SoftplusAffine`, the
choice of nflows 0.14 and so of the ``sbi`` package) rather than the soft-clamped
``exp`` of `vitorch.flows.AffineMap`.  For NPE the softplus trains markedly faster:
on sbibm's Bernoulli GLM the held-out ``log q`` rose by about 0.12 nats per pair after
5 epochs on 100,000 simulations and by about 0.08 after 100 epochs on 10,000.  The two
differ in their gradients: the clamp keeps each layer's log-scale inside
``(-bound, bound)`` and its derivative ``1 / (1 + |raw| / bound)^2`` is already 1/4 at
half the bound, whereas ``log(softplus(raw) + eps)`` follows ``raw`` almost linearly
for scales below 1 (down to ``log eps``) and grows like ``log raw`` above.

A one-dimensional parameter has no autoregressive structure for the context to
enter through, so for ``D = 1`` the flow is a conditional affine map of the base
(a Gaussian ``q(theta | x)`` in the unconstrained, z-scored coordinate).

References:
    Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation* (NeurIPS 2017).
    Durkan, Bekasov, Murray & Papamakarios, *Neural Spline Flows* (NeurIPS 2019).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from ..families.flow import ConditionalFlow
from ..flows import MAF, ElementwiseAffine, RQSpline, SoftplusAffine

__all__ = ["build_flow", "FLOW_KINDS"]


FLOW_KINDS = ("maf", "nsf")


def _order(dim: int, layer: int) -> list[int]:
    if layer == 0:
        return list(range(dim))
    gen = torch.Generator().manual_seed(1000 + layer)
    return torch.randperm(dim, generator=gen).tolist()


def build_flow(
    flow: str | Callable[[int, int], ConditionalFlow],
    dim: int,
    context_features: int,
    transforms: int = 5,
    hidden: Sequence[int] = (50, 50, 50),
    activation: Callable[[], nn.Module] = nn.Tanh,
    bins: int = 10,
) -> ConditionalFlow:
    """A `vitorch.flows.ConditionalFlow` over ``R^dim`` reading a context of ``context_features``.

    Args:
        flow: ``"maf"``, ``"nsf"`` or a factory ``(dim, context_features) -> ConditionalFlow``.
        dim: ``D``.
        context_features: ``C``.
        transforms: number of autoregressive transforms.
        hidden: MADE hidden widths.
        activation: MADE hidden activation constructor.
        bins: spline bins (``"nsf"``); the spline covers ``[-5, 5]`` of the z-scored
            coordinate and is the identity outside.

    Raises:
        ValueError: for an unknown flow name, ``transforms < 1`` or a factory that does not
            return a ``ConditionalFlow`` of dimension ``D``.

    References:
        Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density Estimation* (NeurIPS 2017);
        Durkan, Bekasov, Murray & Papamakarios, *Neural Spline Flows* (NeurIPS 2019).
    """
    if callable(flow) and not isinstance(flow, str):
        made = flow(dim, context_features)
        if not isinstance(made, ConditionalFlow) or made.dim != dim:
            raise ValueError(
                f"NPE: the flow factory must return a ConditionalFlow of dim {dim}; got {type(made).__name__}"
                f"{'' if not isinstance(made, ConditionalFlow) else f' of dim {made.dim}'}"
            )
        return made
    if flow not in FLOW_KINDS:
        raise ValueError(
            f"NPE: flow must be one of {FLOW_KINDS} or a factory (dim, C) -> ConditionalFlow; got {flow!r}"
        )
    if isinstance(transforms, bool) or not isinstance(transforms, int) or transforms < 1:
        raise ValueError(f"NPE: transforms must be an integer >= 1; got {transforms!r}")
    if dim == 1:
        return ConditionalFlow([ElementwiseAffine(1, context_features, tuple(hidden))])
    layers = []
    for i in range(transforms):
        transformer = SoftplusAffine() if flow == "maf" else RQSpline(bins, 5.0)
        layers.append(MAF(dim, transformer, tuple(hidden), context_features, _order(dim, i), activation))
    return ConditionalFlow(layers)
