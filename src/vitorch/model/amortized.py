"""An amortized guide for hierarchical models: one network maps a group's data to its local posterior.

`StructuredGuide` stores a mean, a scale and a coupling for every group, so its size
grows with ``N`` and a group it has not seen has no guide.  `AmortizedGuide` keeps the
full-rank Gaussian on the globals and replaces the per-group parameters with one
encoder shared by all groups,

    ``q(l_i | g, y_i) = N(l_i; m(x_i, g), diag(s(x_i, g)^2))``,  ``x_i = features(y_i)``,

(on the unconstrained scale), where ``(m, log s)`` are the encoder's two halves of
output.  Its inputs are the group's features and the global draw ``g``, so the local
posterior moves with the globals as the exact one does (the funnel between group
effects and a population scale).  The number of parameters does not depend on ``N``:
training reads minibatches of groups through ``vt.fit`` exactly as with the structured
guide (`HierarchicalVI`, local terms scaled by ``N / B``), and new groups get a
posterior from one forward pass.

What amortization costs: the encoder must represent every group's optimum at once, so
the bound can sit below the best per-group guide (the amortization gap, Cremer et al.,
2018).  When the exact ``l_i | g, y_i`` is Gaussian with a mean affine in
``(features, g)`` and a constant scale (a Normal-Normal hierarchy with a known
population scale, features the group's observations), ``hidden=()`` (an affine
encoder) contains the exact posterior and the gap is zero.

References:
    Agrawal & Domke, *Amortized Variational Inference for Simple Hierarchical Models*
    (NeurIPS 2021): a shared network from each group's data to its local posterior.
    Hoffman, Blei, Wang & Paisley, *Stochastic Variational Inference* (JMLR 2013).
    Cremer, Li & Duvenaud, *Inference Suboptimality in Variational Autoencoders* (ICML 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..families import DiagNormal, FullRankNormal
from .hierarchical import HierarchicalModel

__all__ = ["AmortizedGuide", "group_features"]


def group_features(batch) -> Tensor:
    """The default features: every per-group tensor of the batch after the indices, flattened per group.

    Args:
        batch: ``(idx [B], data_1 [B, ...], data_2 [B, ...], ...)``.

    Returns:
        ``[B, F]``, the data tensors reshaped to ``[B, -1]`` and concatenated.

    References:
        Agrawal & Domke, *Amortized Variational Inference for Simple Hierarchical Models*
        (NeurIPS 2021): one network maps each group's data to its local posterior.
    """
    if not isinstance(batch, (tuple, list)) or len(batch) < 2:
        raise ValueError("group_features: the batch must be (group indices [B], per-group data [B, ...], ...)")
    size = batch[0].shape[0]
    return torch.cat([t.reshape(size, -1) for t in batch[1:]], -1)


class AmortizedGuide(nn.Module):
    """``q(g) prod_i q(l_i | g, y_i)``: full-rank globals and a shared encoder for the locals.

    Args:
        model: the `HierarchicalModel`.
        num_features: ``F``, the width of ``features(batch)``.
        features: ``batch -> [B, F]``, what the encoder reads of each group (default
            `group_features`: the group's data flattened).  A summary that does not
            depend on the group's size (counts, means, sums) lets groups of different
            sizes share the encoder.
        hidden: widths of the default encoder's hidden layers (SiLU); ``()`` is an affine map.
        encoder: a module ``[*sample, B, F (+ D_g)] -> [*sample, B, 2 D_l]`` in place of
            the default; its last layer should start near zero, so that the guide starts
            at the locals' start with scale ``init_scale``.
        condition_on_globals: feed the global draw to the encoder (default); ``False``
            gives ``q(l_i | y_i)``, which cannot follow the dependence on the globals.
        init_scale: starting standard deviation (unconstrained scale).
        dtype: parameters' dtype.

    Parameters: the global ``loc [D_g]``, ``log_scale [D_g]``, ``lower [D_g, D_g]``
    and the encoder's; none per group.

    ``global_family()`` is a `vitorch.FullRankNormal` over ``[D_g]``;
    ``local_family(z_global [*sample, D_g], batch)`` a `vitorch.DiagNormal` with batch
    shape ``[*sample, B]`` (``stop=True`` evaluates the encoder at detached parameters,
    for STL).  Give it to `HierarchicalVI`, which passes it the whole batch.

    Raises:
        TypeError: if ``model`` is not a `HierarchicalModel` or ``encoder`` not a module.
        ValueError: for a non-positive ``num_features`` or ``init_scale``, or features
            of the wrong shape (when read).

    References:
        Agrawal & Domke, *Amortized Variational Inference for Simple Hierarchical Models*
        (NeurIPS 2021).
    """

    default_lr = 0.01

    def __init__(
        self,
        model: HierarchicalModel,
        num_features: int,
        *,
        features: Callable[[object], Tensor] = group_features,
        hidden: Sequence[int] = (64, 64),
        encoder: nn.Module | None = None,
        condition_on_globals: bool = True,
        init_scale: float = 0.1,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        if not isinstance(model, HierarchicalModel):
            raise TypeError(f"AmortizedGuide: model must be a HierarchicalModel; got {type(model).__name__}")
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"AmortizedGuide: num_features must be an integer >= 1; got {num_features!r}")
        if not (isinstance(init_scale, (int, float)) and math.isfinite(init_scale) and init_scale > 0):
            raise ValueError(f"AmortizedGuide: init_scale must be a finite number > 0; got {init_scale!r}")
        if not callable(features):
            raise TypeError(f"AmortizedGuide: features must be callable; got {type(features).__name__}")
        dtype = dtype or torch.get_default_dtype()
        dg, dl = model.dim_global, model.dim_local
        self.num_features, self.features, self.condition_on_globals = num_features, features, condition_on_globals
        self.loc = nn.Parameter(model.globals.init(dtype))
        self.log_scale = nn.Parameter(torch.full((dg,), math.log(init_scale), dtype=dtype))
        self.lower = nn.Parameter(torch.zeros(dg, dg, dtype=dtype))
        self.register_buffer("eye", torch.eye(dg, dtype=dtype), persistent=False)
        # The encoder's outputs are offsets from the locals' start and from log(init_scale).
        self.register_buffer("local_start", model.locals.init(dtype), persistent=False)
        self.log_init_scale = math.log(init_scale)
        if encoder is None:
            encoder = _mlp(num_features + (dg if condition_on_globals else 0), tuple(hidden), 2 * dl).to(dtype)
        elif not isinstance(encoder, nn.Module):
            raise TypeError(f"AmortizedGuide: encoder must be an nn.Module; got {type(encoder).__name__}")
        self.encoder = encoder
        self.dim_local = dl

    def global_family(self) -> FullRankNormal:
        tril = self.log_scale.exp().unsqueeze(-1) * (self.eye + self.lower.tril(-1))
        return FullRankNormal(self.loc, tril, validate_args=False)

    def encoder_input(self, z_global: Tensor, batch) -> Tensor:
        """``[*sample, B, F (+ D_g)]``: each group's features, with the global draw appended."""
        x = self.features(batch)
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[-1] != self.num_features:
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(
                f"AmortizedGuide: features(batch) must be [B, num_features={self.num_features}]; got {got}"
            )
        sample = z_global.shape[:-1]
        x = x.to(z_global.dtype).expand(*sample, *x.shape)
        if not self.condition_on_globals:
            return x
        g = z_global.unsqueeze(-2).expand(*sample, x.shape[-2], z_global.shape[-1])
        return torch.cat([x, g], -1)

    def local_family(self, z_global: Tensor, batch, stop: bool = False) -> DiagNormal:
        """``q(l_i | g, y_i)`` for the batch's groups, batch shape ``[*sample, B]``, event ``[D_l]``.

        Args:
            z_global: ``[*sample, D_g]`` unconstrained globals.
            batch: what the data loader gives, ``(idx [B], data...)``; ``features`` reads it.
            stop: evaluate the encoder at detached parameters (its output still depends
                on ``z_global``): the density that STL reads.
        """
        inp = self.encoder_input(z_global, batch)
        if stop:
            params = {k: v.detach() for k, v in self.encoder.named_parameters()}
            out = functional_call(self.encoder, {**params, **dict(self.encoder.named_buffers())}, (inp,))
        else:
            out = self.encoder(inp)
        if out.shape != (*inp.shape[:-1], 2 * self.dim_local):
            raise ValueError(f"AmortizedGuide: the encoder must return [*sample, B, 2 D_l]; got {tuple(out.shape)}")
        loc = self.local_start + out[..., : self.dim_local]
        return DiagNormal(loc, (out[..., self.dim_local :] + self.log_init_scale).exp(), validate_args=False)

    def forward(self, batch):
        """``(q(g), a function z_global -> q(l_i | g, y_i))`` for the batch's groups."""
        return self.global_family(), lambda z_global: self.local_family(z_global, batch)


def _mlp(width_in: int, hidden: tuple[int, ...], width_out: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(width_in, width), nn.SiLU()]
        width_in = width
    last = nn.Linear(width_in, width_out)
    nn.init.zeros_(last.weight)  # start at the locals' start, scale init_scale, for every group
    nn.init.zeros_(last.bias)
    layers.append(last)
    return nn.Sequential(*layers)
