"""MADE: a masked multilayer perceptron whose outputs for dimension ``i`` see only
the inputs that precede ``i`` in a chosen order (Germain et al., 2015).

It is the conditioner of `vitorch.flows.MAF` and `vitorch.flows.IAF`:
one network pass yields every dimension's parameters, and the masks make the
Jacobian of the flow triangular (in the chosen order).  A context is an extra input
of degree 0, so every unit may read it.

The autoregressive direction (solving ``out_i = g(v_i; MADE(out_<i))`` for ``out``) is
`MADE.autoregress`: ``D`` sequential steps, each of which computes only what
is new -- the hidden units whose inputs have just been solved (units are sorted by
degree, so these are one contiguous block per layer), the current dimension's
output units and its univariate map.

References:
    Germain, Gregor, Murray & Larochelle, MADE: Masked Autoencoder for Distribution
    Estimation (ICML 2015).
    Papamakarios, Pavlakou & Murray, Masked Autoregressive Flow for Density Estimation (NeurIPS 2017).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .._autocast import full_precision
from .base import check_features

__all__ = ["MADE", "MaskedLinear"]


def _in_place(activation: nn.Module) -> nn.Module:
    """A copy of ``activation`` that overwrites its input, if the module has that option."""
    if not hasattr(activation, "inplace"):
        return activation
    twin = copy.copy(activation)
    twin.inplace = True
    return twin


class MaskedLinear(nn.Linear):
    """``nn.Linear`` whose weight ``[out, in]`` is multiplied by a fixed 0/1 mask of that shape.

    Calling it maps ``x [*shape, in]`` to ``[*shape, out]``.

    Args:
        mask: ``[out, in]``, nonzero where an input may reach an output.

    References:
        Germain, Gregor, Murray & Larochelle, MADE (ICML 2015), eq. 10.
    """

    def __init__(self, mask: Tensor):
        super().__init__(mask.shape[1], mask.shape[0])
        # Not saved: the constructor's arguments determine it (and MADE relies on its layout).
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def masked_weight(self) -> Tensor:
        """The effective weight ``weight * mask``, ``[out, in]``."""
        return self.weight * self.mask

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.masked_weight(), self.bias)


class MADE(nn.Module):
    """Autoregressive conditioner ``x [*shape, D] (+ context [*batch, C]) -> params [*shape, D, P]``.

    Args:
        dim: ``D``.
        num_params: ``P`` outputs per dimension.
        hidden: hidden widths (each should be ``>= D - 1`` so every input can reach
            every later output).
        context_features: ``C`` extra inputs every unit may read.
        order: a permutation of ``range(D)``: the autoregressive order
            (``order[0]`` is the first dimension, depending on nothing but the context).
        activation: constructor of the hidden activation module (default ``nn.ELU``,
            smooth, so a flow's Jacobian is continuous).
        param_major: lay the output units out as ``[P, D]`` instead of ``[D, P]``.  The
            returned ``[*shape, D, P]`` tensor is then a transposed view whose slices
            ``params[..., p]`` are contiguous, which elementwise maps (affine) read
            faster; maps that reduce over ``P`` (splines) prefer ``False``.

    References:
        Germain, Gregor, Murray & Larochelle, MADE: Masked Autoencoder for Distribution
        Estimation (ICML 2015).
    """

    def __init__(
        self,
        dim: int,
        num_params: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        order: Sequence[int] | None = None,
        activation: Callable[[], nn.Module] = nn.ELU,
        param_major: bool = False,
    ):
        super().__init__()
        self.dim = check_features("dim", dim)
        self.num_params = check_features("num_params", num_params)
        self.context_features = check_features("context_features", context_features, 0)
        self.param_major = bool(param_major)
        order = list(range(dim)) if order is None else [int(i) for i in order]
        if sorted(order) != list(range(dim)):
            raise ValueError(f"MADE: order must be a permutation of range({dim}); got {order}")
        if not hidden:
            raise ValueError("MADE: hidden must name at least one hidden width")
        self.register_buffer("order", torch.tensor(order), persistent=False)
        rank = torch.empty(dim, dtype=torch.long)
        rank[torch.tensor(order)] = torch.arange(1, dim + 1)
        # Degrees: context 0, inputs 1..D by rank, hidden units take 1..D-1 in turn (sorted).
        in_deg = torch.cat([torch.zeros(context_features, dtype=torch.long), rank])
        layers: list[nn.Module] = []
        # Per hidden layer, the units of each degree m < D as a (start, end) range:
        # degrees are sorted, so each degree's units are contiguous (autoregress uses it).
        self._degree_ranges: list[list[tuple[int, int]]] = []
        prev = in_deg
        for h in hidden:
            deg = torch.sort(torch.arange(check_features("hidden width", h)) % max(dim - 1, 1) + 1).values
            layers += [MaskedLinear(deg[:, None] >= prev[None, :]), activation()]
            self._degree_ranges.append([(int((deg < m).sum()), int((deg <= m).sum())) for m in range(dim)])
            prev = deg
        out_deg = rank.repeat(num_params) if self.param_major else rank.repeat_interleave(num_params)
        layers.append(MaskedLinear(out_deg[:, None] > prev[None, :]))
        self.net = nn.Sequential(*layers)
        # The activations applied in place where the module supports it (ReLU, ELU, ...):
        # they only ever act on a fresh linear output, which no backward needs, and it
        # saves one allocation per layer.  A plain list, so no duplicate submodules.
        self._acts = [_in_place(a) for a in layers[1::2]]

    def _check_context(self, context: Tensor | None) -> None:
        if context is None:
            raise ValueError(f"MADE is conditional (context_features={self.context_features}); pass context")
        if context.shape[-1] != self.context_features:
            raise ValueError(
                f"context must end in context_features={self.context_features}; got shape {tuple(context.shape)}"
            )

    def _unflatten(self, out: Tensor) -> Tensor:
        if self.param_major:
            return out.unflatten(-1, (self.num_params, self.dim)).transpose(-1, -2)
        return out.unflatten(-1, (self.dim, self.num_params))

    def forward(self, x: Tensor, context: Tensor | None = None) -> Tensor:
        """``x [*shape, D]`` (and ``context [*batch, C]``) -> ``params [*shape', D, P]``, ``shape'`` broadcast."""
        if self.context_features:
            self._check_context(context)
            shape = torch.broadcast_shapes(context.shape[:-1], x.shape[:-1])
            x = torch.cat([context.expand(*shape, -1), x.expand(*shape, -1)], -1)
        lins = list(self.net)[0::2]
        for lin, act in zip(lins, self._acts):
            x = act(lin(x))
        return self._unflatten(full_precision(lins[-1](x)))  # autocast: the map's parameters in float32

    def autoregress(
        self, v: Tensor, context: Tensor | None, step: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """Solve ``out_i = step(v_i, params_i(out_<i))`` dimension by dimension, in ``order``.

        This is the sequential direction of MAF (sampling) and IAF (``log_prob``):
        ``D`` steps, each exact given the earlier ones, so the result carries the
        exact graph.  A hidden unit of degree ``m`` reads only inputs of rank
        ``<= m``, so it is final once those are solved: step ``r`` computes just the
        units of degree ``r - 1`` in each layer and the ``P`` output units of the
        ``r``-th dimension.  All ``D`` steps together cost about one network pass
        (zuko and nflows run the whole network at every step, ``D`` passes).

        Args:
            v: ``[*shape, D]``, the inputs of the univariate maps.
            context: ``[*batch, C]`` or ``None``.
            step: ``(v_i [*shape, 1], params [*shape, 1, P]) -> (out_i, ladj_i)``, both
                ``[*shape, 1]``: the univariate map in the solved direction.

        Returns:
            ``out [*shape', D]`` and the summed ``ladj [*shape']`` (``shape'`` is
            ``shape`` broadcast with the context's batch shape).
        """
        lins = list(self.net)[0::2]
        acts = self._acts
        c, d, p = self.context_features, self.dim, self.num_params
        weights = [lin.masked_weight() for lin in lins]
        shape = v.shape[:-1]
        if c:
            self._check_context(context)
            shape = torch.broadcast_shapes(context.shape[:-1], shape)
            first_bias = F.linear(context, weights[0][:, :c], lins[0].bias)  # [*batch, H]
        else:
            first_bias = lins[0].bias
        weights[0] = weights[0][:, c:]  # [H, D]: the inputs' columns
        biases = [first_bias] + [lin.bias for lin in lins[1:]]
        # Solved dimensions and final hidden units, zero until computed (their weights
        # into anything not yet final are masked to zero).  Without a graph to record
        # the buffers are written in place; with one, each write is a new tensor.
        in_place = not torch.is_grad_enabled()
        out = v.new_zeros(*shape, d)
        hidden = [v.new_zeros(*shape, lin.out_features) for lin in lins[:-1]]
        ladj = v.new_zeros(())
        for r, i in enumerate(self.order.tolist()):
            if r > 0:  # units of degree r become final: their inputs have ranks <= r
                below = out
                for layer, act in enumerate(acts):
                    lo, hi = self._degree_ranges[layer][r]
                    if hi > lo:
                        b = biases[layer][..., lo:hi]  # [*batch, n] for the first layer with a context
                        w = weights[layer][lo:hi]
                        units = act(F.linear(below, w, b) if b.dim() == 1 else F.linear(below, w) + b)
                        if in_place:
                            hidden[layer][..., lo:hi] = units
                        else:
                            hidden[layer] = hidden[layer].slice_scatter(units, -1, lo, hi)
                    below = hidden[layer]
            rows = slice(i, None, d) if self.param_major else slice(i * p, (i + 1) * p)
            params = F.linear(hidden[-1], weights[-1][rows], biases[-1][rows]).unsqueeze(-2)  # [*, 1, P]
            out_i, ladj_i = step(v[..., i : i + 1], params)
            ladj = ladj + ladj_i.squeeze(-1)
            if in_place:
                out[..., i : i + 1] = out_i
            else:
                out = out.slice_scatter(out_i.expand(*shape, 1), -1, i, i + 1)
        return out, ladj.expand(shape)
