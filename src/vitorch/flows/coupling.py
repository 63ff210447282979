"""Coupling flows: half of the dimensions condition a univariate map of the other half.

``y_a = x_a``, ``y_b = f(x_b; NN(x_a, context))`` (Dinh et al., 2017).  The Jacobian is
block triangular, so the log-determinant is the sum of the map's log-derivatives, and
both directions are one network pass: sampling, ``log_prob``, sticking-the-landing and
DReG all cost the same.  Stack layers with alternating masks (``swap=True``) or
permutations so that every dimension is transformed.

With `vitorch.flows.AffineMap` this is RealNVP's affine coupling; with
`vitorch.flows.RQSpline` it is the coupling neural spline flow.

References:
    Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
    Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .._autocast import full_precision
from .base import Transform, check_features, mlp
from .univariate import AffineMap, RQSpline, UnivariateMap

__all__ = ["Coupling", "AffineCoupling", "SplineCoupling"]


class Coupling(Transform):
    """Coupling layer with any univariate map.

    Args:
        dim: event size ``D >= 2``.
        transformer: the univariate map (default `AffineMap`).
        hidden: hidden widths of the conditioner network.
        context_features: ``C`` for amortized flows (0: unconditional).
        mask: boolean ``[D]``, true for the dimensions that pass through unchanged
            and condition the others (default: the first ``D // 2``).
        swap: negate the mask (alternate this between stacked layers).

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
        Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019).
    """

    def __init__(
        self,
        dim: int,
        transformer: UnivariateMap | None = None,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        mask: Sequence[bool] | Tensor | None = None,
        swap: bool = False,
    ):
        super().__init__(dim)
        if dim < 2:
            raise ValueError(f"Coupling needs dim >= 2 (one half conditions the other); got dim={dim}")
        self.transformer = AffineMap() if transformer is None else transformer
        if not isinstance(self.transformer, UnivariateMap):
            raise ValueError(f"transformer must be a UnivariateMap (AffineMap(), RQSpline()); got {transformer!r}")
        mask = torch.arange(dim) < dim // 2 if mask is None else torch.as_tensor(mask, dtype=torch.bool)
        if mask.shape != (dim,):
            raise ValueError(f"Coupling: mask must have shape [{dim}]; got {tuple(mask.shape)}")
        mask = ~mask if swap else mask
        if bool(mask.all()) or not bool(mask.any()):
            raise ValueError("Coupling: mask must keep at least one dimension and transform at least one")
        self.context_features = check_features("context_features", context_features, 0)
        idx_a, idx_b = mask.nonzero().squeeze(-1), (~mask).nonzero().squeeze(-1)
        self.register_buffer("idx_a", idx_a, persistent=False)
        self.register_buffer("idx_b", idx_b, persistent=False)
        self.register_buffer("unperm", torch.argsort(torch.cat([idx_a, idx_b])), persistent=False)
        self.net = mlp(len(idx_a) + context_features, hidden, len(idx_b) * self.transformer.num_params)

    def _params(self, x_a: Tensor, context: Tensor | None) -> Tensor:
        if self.context_features:
            if context is None or context.shape[-1] != self.context_features:
                got = None if context is None else tuple(context.shape)
                raise ValueError(f"context must end in context_features={self.context_features}; got {got}")
            shape = torch.broadcast_shapes(context.shape[:-1], x_a.shape[:-1])
            x_a = torch.cat([x_a.expand(*shape, -1), context.expand(*shape, -1)], -1)
        return full_precision(self.net(x_a)).unflatten(-1, (len(self.idx_b), self.transformer.num_params))

    def _couple(self, v: Tensor, context: Tensor | None, inverse: bool) -> tuple[Tensor, Tensor]:
        v_a, v_b = v.index_select(-1, self.idx_a), v.index_select(-1, self.idx_b)
        params = self._params(v_a, context)
        out_b, ladj = (self.transformer.inverse if inverse else self.transformer)(v_b, params)
        v_a = v_a.expand(*out_b.shape[:-1], -1)
        return torch.cat([v_a, out_b], -1).index_select(-1, self.unperm), ladj.sum(-1)

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        return self._couple(x, context, inverse=False)

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        return self._couple(y, context, inverse=True)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, transformer={self.transformer!r}, kept={self.idx_a.tolist()}"


class AffineCoupling(Coupling):
    """RealNVP affine coupling: `Coupling` with an `AffineMap`.

    Args:
        dim: event size ``D >= 2``.
        hidden: hidden widths of the conditioner network.
        context_features: ``C`` for amortized flows (0: unconditional).
        mask: boolean ``[D]``, true for the dimensions that pass through unchanged
            and condition the others (default: the first ``D // 2``).
        swap: negate the mask (alternate this between stacked layers).
        bound: largest absolute log-scale per layer.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        mask: Sequence[bool] | Tensor | None = None,
        swap: bool = False,
        bound: float = 3.0,
    ):
        super().__init__(dim, AffineMap(bound), hidden, context_features, mask, swap)


class SplineCoupling(Coupling):
    """Coupling neural spline flow: `Coupling` with an `RQSpline`.

    Args:
        dim: event size ``D >= 2``.
        hidden: hidden widths of the conditioner network.
        context_features: ``C`` for amortized flows (0: unconditional).
        mask: boolean ``[D]``, true for the dimensions that pass through unchanged
            and condition the others (default: the first ``D // 2``).
        swap: negate the mask (alternate this between stacked layers).
        bins: the spline's ``K``, its number of bins.
        bound: the spline's ``B``, half-width of its interval (identity outside).

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
        Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019).
    """

    def __init__(
        self,
        dim: int,
        hidden: Sequence[int] = (64, 64),
        context_features: int = 0,
        mask: Sequence[bool] | Tensor | None = None,
        swap: bool = False,
        bins: int = 8,
        bound: float = 5.0,
    ):
        super().__init__(dim, RQSpline(bins, bound), hidden, context_features, mask, swap)
