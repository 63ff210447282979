"""Monotone univariate maps applied dimension-wise by autoregressive and coupling flows.

A map is configuration, not a module: the conditioner network (MADE or a coupling
network) emits ``params [*shape, D, P]`` and the map turns ``x [*shape, D]`` into
``y`` with the *elementwise* ``log|dy/dx|`` ``[*shape, D]``.  Two maps:

* :class:`AffineMap`: ``y = shift + exp(log_scale) x`` (RealNVP, MAF, IAF);
* :class:`RQSpline`: a monotone rational-quadratic spline on ``[-B, B]`` with ``K``
  bins and the identity outside (Durkan et al., 2019), analytically invertible by
  a quadratic solve.

References:
    Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
    Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019), eqs. 4-8.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["UnivariateMap", "AffineMap", "RQSpline"]


class UnivariateMap:
    """Interface: ``num_params`` and the elementwise forward/inverse with log-derivatives."""

    num_params: int

    def __call__(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``x [*shape, D]``, ``params [*shape', D, P]`` -> ``(y, log|dy/dx|)``, both ``[*shape, D]``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|dx/dy|)`` for the same parameters."""
        raise NotImplementedError


class AffineMap(UnivariateMap):
    """``y = shift + exp(s) x`` with ``s = bound tanh(raw / bound)``.

    The soft clamp keeps one layer's scale within ``[e^-bound, e^bound]``, which
    prevents the overflow that an unbounded ``exp`` causes early in training.

    Args:
        bound: largest absolute log-scale of one layer.
    """

    num_params = 2

    def __init__(self, bound: float = 3.0):
        if not bound > 0:
            raise ValueError(f"AffineMap: bound must be > 0; got {bound}")
        self.bound = float(bound)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], self.bound * torch.tanh(params[..., 1] / self.bound)

    def __call__(self, x, params):
        shift, log_scale = self._split(params)
        y = shift + torch.exp(log_scale) * x
        return y, log_scale.expand_as(y)

    def inverse(self, y, params):
        shift, log_scale = self._split(params)
        x = (y - shift) * torch.exp(-log_scale)
        return x, (-log_scale).expand_as(x)

    def __repr__(self) -> str:
        return f"AffineMap(bound={self.bound})"


class RQSpline(UnivariateMap):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``K`` bin widths and heights come from softmaxes, the ``K - 1`` interior knot
    derivatives from a softplus (raw value 0 gives derivative 1); the boundary
    derivatives are 1 so the spline joins the identity tails smoothly.

    Args:
        bins: ``K``; the map takes ``3K - 1`` parameters per dimension.
        bound: ``B``, half-width of the spline's interval.
        min_width: smallest bin width, as a fraction of ``2B`` (need ``min_width * K < 1``).
        min_height: smallest bin height, as a fraction of ``2B`` (need ``min_height * K < 1``).
        min_derivative: smallest interior knot derivative (in ``(0, 1)``).
    """

    def __init__(
        self,
        bins: int = 8,
        bound: float = 5.0,
        min_width: float = 1e-3,
        min_height: float = 1e-3,
        min_derivative: float = 1e-3,
    ):
        if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
            raise ValueError(f"RQSpline: bins must be an integer >= 1; got {bins!r}")
        if not bound > 0:
            raise ValueError(f"RQSpline: bound must be > 0; got {bound}")
        if not (0 < min_width * bins < 1 and 0 < min_height * bins < 1 and 0 < min_derivative < 1):
            raise ValueError(
                "RQSpline: need 0 < min_width * bins < 1, 0 < min_height * bins < 1 and 0 < min_derivative < 1; "
                f"got min_width={min_width}, min_height={min_height}, min_derivative={min_derivative}, bins={bins}"
            )
        self.bins, self.bound = bins, float(bound)
        self.min_width, self.min_height, self.min_derivative = min_width, min_height, min_derivative
        self.num_params = 3 * bins - 1
        # softplus(raw + offset) + min_derivative == 1 at raw == 0.
        self._offset = math.log(math.expm1(1 - min_derivative))

    def _knots(self, raw: Tensor, floor: float) -> Tensor:
        frac = floor + (1 - floor * self.bins) * torch.softmax(raw, dim=-1)
        knots = F.pad(torch.cumsum(frac, dim=-1), (1, 0))
        knots = self.bound * (2 * knots - 1)
        # Pin the ends exactly, so rounding in the cumulative sum cannot open a gap.
        ends = torch.full_like(knots[..., :1], self.bound)
        return torch.cat([-ends, knots[..., 1:-1], ends], -1)

    def _spline(self, params: Tensor, shape: torch.Size):
        k = self.bins
        params = params.expand(*torch.broadcast_shapes(params.shape[:-1], shape), params.shape[-1])
        xs = self._knots(params[..., :k], self.min_width)
        ys = self._knots(params[..., k : 2 * k], self.min_height)
        d = self.min_derivative + F.softplus(params[..., 2 * k :] + self._offset)
        d = F.pad(d, (1, 1), value=1.0)
        return xs, ys, d

    @staticmethod
    def _bin(knots: Tensor, v: Tensor) -> Tensor:
        # Index of the bin holding v: the number of interior knots at or below it.
        return (v.unsqueeze(-1) >= knots[..., 1:-1]).sum(-1, keepdim=True)

    @staticmethod
    def _gather(idx: Tensor, *tables: Tensor) -> list[Tensor]:
        out = []
        for t in tables:
            lo = t.gather(-1, idx).squeeze(-1)
            hi = t.gather(-1, idx + 1).squeeze(-1)
            out += [lo, hi]
        return out

    def __call__(self, x, params):
        xs, ys, d = self._spline(params, x.shape)
        inside = (x > -self.bound) & (x < self.bound)
        xc = torch.where(inside, x, 0.0)
        x0, x1, y0, y1, d0, d1 = self._gather(self._bin(xs, xc), xs, ys, d)
        w, h = x1 - x0, y1 - y0
        s = h / w
        xi = (xc - x0) / w
        t = xi * (1 - xi)
        denom = s + (d0 + d1 - 2 * s) * t
        y = y0 + h * (s * xi * xi + d0 * t) / denom
        dydx = s * s * (d1 * xi * xi + 2 * s * t + d0 * (1 - xi) ** 2) / denom**2
        return torch.where(inside, y, x), torch.where(inside, torch.log(dydx), 0.0)

    def inverse(self, y, params):
        xs, ys, d = self._spline(params, y.shape)
        inside = (y > -self.bound) & (y < self.bound)
        yc = torch.where(inside, y, 0.0)
        x0, x1, y0, y1, d0, d1 = self._gather(self._bin(ys, yc), xs, ys, d)
        w, h = x1 - x0, y1 - y0
        s = h / w
        dy = yc - y0
        curv = d0 + d1 - 2 * s
        # xi solves a xi^2 + b xi + c = 0 (Durkan et al., eqs. 6-8); the root below avoids cancellation.
        a = h * (s - d0) + dy * curv
        b = h * d0 - dy * curv
        c = -s * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        x = x0 + xi * w
        t = xi * (1 - xi)
        denom = s + curv * t
        dydx = s * s * (d1 * xi * xi + 2 * s * t + d0 * (1 - xi) ** 2) / denom**2
        return torch.where(inside, x, y), torch.where(inside, -torch.log(dydx), 0.0)

    def __repr__(self) -> str:
        return f"RQSpline(bins={self.bins}, bound={self.bound})"
