"""Monotone univariate maps applied dimension-wise by autoregressive and coupling flows.

A map is configuration, not a module: the conditioner network (MADE or a coupling
network) emits ``params [*shape, D, P]`` and the map turns ``x [*shape, D]`` into
``y`` with the *elementwise* ``log|dy/dx|`` ``[*shape, D]``.  Two maps:

* `AffineMap`: ``y = shift + exp(log_scale) x`` (RealNVP, MAF, IAF);
* `RQSpline`: a monotone rational-quadratic spline on ``[-B, B]`` with ``K``
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

__all__ = ["UnivariateMap", "AffineMap", "SoftplusAffine", "RQSpline"]

_EXP_SAFE = 60.0  # exp(+-60) ~ 1e+-26: sums of such terms neither overflow nor vanish in float32


class UnivariateMap:
    """Interface of a monotone elementwise map ``y = f(x; params)`` with its log-derivative.

    Shapes: ``x, y [*shape, D]``, ``params [*shape', D, P]`` broadcasting against
    ``[*shape, D]``; both directions return the elementwise ``log|dy/dx|`` (or
    ``log|dx/dy|``) ``[*shape, D]``, which a flow sums over ``D``.

    Attributes:
        num_params: ``P``, the parameters per dimension.
        reduces_params: ``True`` if the map reduces over ``P`` (a softmax over bins),
            so a conditioner should lay its outputs out dimension-major (``[D, P]``);
            ``False`` if it reads each parameter as an elementwise operand, which is
            faster from a parameter-major (``[P, D]``) layout.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and
        Inference (JMLR 2021), sec. 3.1 (transformers and conditioners).
    """

    num_params: int
    reduces_params = False

    def __call__(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``x [*shape, D]``, ``params [*shape', D, P]`` -> ``(y, log|dy/dx|)``, both ``[*shape, D]``."""
        raise NotImplementedError

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        """``(x, log|dx/dy|)`` for the same parameters, both ``[*shape, D]``."""
        raise NotImplementedError


class AffineMap(UnivariateMap):
    """``y = shift + exp(s) x`` with ``s = raw / (1 + |raw| / bound)``.

    The soft clamp keeps one layer's scale within ``(e^-bound, e^bound)``, which
    prevents the overflow that an unbounded ``exp`` causes early in training; near 0
    it is the identity (slope 1).  It is algebraic rather than ``bound tanh(raw /
    bound)`` because torch's CPU ``tanh`` costs several times an ``exp``.
    ``params [*, D, 2]`` holds ``(shift, raw)``; ``x, y [*, D]``.

    Args:
        bound: largest absolute log-scale of one layer.

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017).
        Papamakarios, Pavlakou & Murray, Masked Autoregressive Flow (NeurIPS 2017), eq. 3.
    """

    num_params = 2

    def __init__(self, bound: float = 3.0):
        if not bound > 0:
            raise ValueError(f"AffineMap: bound must be > 0; got {bound}")
        self.bound = float(bound)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        raw = params[..., 1]
        # abs's backward reads its input, so its output may be updated in place.
        return params[..., 0], raw / raw.abs().div_(self.bound).add_(1.0)

    def __call__(self, x, params):
        shift, log_scale = self._split(params)
        y = torch.addcmul(shift, torch.exp(log_scale), x)
        return y, log_scale.expand_as(y)

    def inverse(self, y, params):
        shift, log_scale = self._split(params)
        x = (y - shift) / torch.exp(log_scale)
        return x, (-log_scale).expand_as(x)

    def __repr__(self) -> str:
        return f"AffineMap(bound={self.bound})"


class SoftplusAffine(UnivariateMap):
    """``y = shift + (softplus(raw) + eps) x``: an affine map with a softplus scale.

    ``params [*, D, 2]`` holds ``(shift, raw)`` as for `vitorch.flows.AffineMap`;
    ``x, y [*, D]``; the elementwise ``log|dy/dx|`` is ``log(softplus(raw) + eps)``.  The
    scale lies in ``(eps, inf)``; ``log scale`` follows ``raw`` almost linearly below 1
    and grows like ``log raw`` above, so neither direction saturates early in training.
    In a MAF the forward direction is the density direction (``y`` is the base side).

    Args:
        eps: the smallest scale (nflows uses 1e-3).

    References:
        Papamakarios, Pavlakou & Murray, *Masked Autoregressive Flow for Density
        Estimation* (NeurIPS 2017), eq. 3;
        Durkan, Bekasov, Murray & Papamakarios, *nflows* (2020),
        ``MaskedAffineAutoregressiveTransform``.
    """

    num_params = 2

    def __init__(self, eps: float = 1e-3):
        if not eps > 0:
            raise ValueError(f"SoftplusAffine: eps must be > 0; got {eps}")
        self.eps = float(eps)

    def _split(self, params: Tensor) -> tuple[Tensor, Tensor]:
        return params[..., 0], F.softplus(params[..., 1]).add_(self.eps)

    def __call__(self, x: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._split(params)
        y = torch.addcmul(shift, scale, x)
        return y, scale.log().expand_as(y)

    def inverse(self, y: Tensor, params: Tensor) -> tuple[Tensor, Tensor]:
        shift, scale = self._split(params)
        x = (y - shift) / scale
        return x, scale.log().neg_().expand_as(x)

    def __repr__(self) -> str:
        return f"SoftplusAffine(eps={self.eps})"


class RQSpline(UnivariateMap):
    """Monotone rational-quadratic spline on ``[-bound, bound]``, identity outside.

    ``K`` bin widths and heights come from softmaxes (above a floor), the ``K - 1``
    interior knot derivatives from a softplus (raw value 0 gives derivative 1); the
    boundary derivatives are 1 so the spline joins the identity tails smoothly.
    ``params [*, D, 3K - 1]`` holds ``K`` width logits, ``K`` height logits and
    ``K - 1`` derivative parameters per dimension; ``x, y [*, D]``.

    Only the bin holding each point is evaluated: the knot derivatives (a softplus)
    are computed for its two knots alone, and the widths and heights share one
    normalization and one cumulative sum.

    Args:
        bins: ``K``; the map takes ``3K - 1`` parameters per dimension.
        bound: ``B``, half-width of the spline's interval.
        min_width: smallest bin width, as a fraction of ``2B`` (need ``min_width * K < 1``).
        min_height: smallest bin height, as a fraction of ``2B`` (need ``min_height * K < 1``).
        min_derivative: smallest interior knot derivative (in ``(0, 1)``).

    References:
        Durkan, Bekasov, Murray & Papamakarios, Neural Spline Flows (NeurIPS 2019), eqs. 4-8.
    """

    reduces_params = True

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
        # Bin sizes are floor + scale * softmax, widths in row 0 and heights in row 1.
        two_b = 2 * self.bound
        self._floor = ((two_b * min_width,), (two_b * min_height,))
        self._scale = ((two_b * (1 - min_width * bins),), (two_b * (1 - min_height * bins),))

    def _tables(self, params: Tensor, shape: torch.Size) -> tuple[Tensor, Tensor, Tensor]:
        """Bin sizes ``[*, D, 2, K]`` (widths, heights), their cumulative sums (right knots
        plus ``B``) and the raw interior derivatives ``[*, D, K - 1]``, expanded to ``shape``."""
        k = self.bins
        raw = params[..., : 2 * k].unflatten(-1, (2, k))
        # The softmax written out: torch's kernel is slow along a last dimension this
        # short, and the normalizer folds into the floor-and-scale step.  Shifting by
        # each row's max (a constant, as softmax ignores shifts) only matters when exp
        # could overflow or underflow, so one global check decides whether to pay for it.
        if raw.numel() and float(raw.detach().abs().max()) > _EXP_SAFE:
            e = (raw - raw.detach().amax(-1, keepdim=True)).exp_()
        else:
            e = raw.exp()
        floor, scale = e.new_tensor(self._floor), e.new_tensor(self._scale)
        sizes = torch.addcmul(floor, e, scale / e.sum(-1, keepdim=True))
        cums = sizes.cumsum(-1)
        batch = torch.broadcast_shapes(params.shape[:-1], shape)
        expand = (*batch, 2, k)
        return sizes.expand(expand), cums.expand(expand), params[..., 2 * k :].expand(*batch, k - 1)

    def _locate(self, v: Tensor, params: Tensor, row: int):
        """For ``v [*, D]`` on the ``row`` axis (0: x, 1: y): the clamped ``v + B``, whether
        ``v`` is inside, and its bin's width, height, left knots ``(x0, y0) + B`` and knot
        derivatives ``d0, d1``, each ``[*, D]``."""
        k, bound = self.bins, self.bound
        sizes, cums, raw_d = self._tables(params, v.shape)
        inside = v.abs() < bound
        vb = v.clamp(-bound, bound) + bound
        idx = (vb.unsqueeze(-1) >= cums[..., row, : k - 1]).sum(-1)  # [*, D]: the bin holding v
        at = idx[..., None, None].expand(*idx.shape, 2, 1)
        size, right = sizes.gather(-1, at), cums.gather(-1, at)
        w, h = size[..., 0, 0], size[..., 1, 0]
        x0, y0 = right[..., 0, 0] - w, right[..., 1, 0] - h
        if k == 1:
            d0 = d1 = torch.ones_like(w)
        else:
            knots = (idx.unsqueeze(-1) + idx.new_tensor([-1, 0])).clamp_(0, k - 2)  # derivatives at knots k, k+1
            d = F.softplus(raw_d.gather(-1, knots) + self._offset).add_(self.min_derivative)
            d0 = torch.where(idx == 0, 1.0, d[..., 0])
            d1 = torch.where(idx == k - 1, 1.0, d[..., 1])
        return vb, inside, w, h, x0, y0, d0, d1

    @staticmethod
    def _log_slope(s: Tensor, xi: Tensor, om: Tensor, d0: Tensor, d1: Tensor, denom: Tensor) -> Tensor:
        # log dy/dx = log(s^2 (d1 xi^2 + 2 s xi (1 - xi) + d0 (1 - xi)^2) / denom^2)  (Durkan et al., eq. 5)
        slope_num = torch.addcmul(torch.addcmul(d1 * xi * xi, s, xi * om, value=2), d0, om * om)
        return torch.add(slope_num.log(), (s / denom).log(), alpha=2)

    def __call__(self, x, params):
        xb, inside, w, h, x0, y0, d0, d1 = self._locate(x, params, 0)
        s = h / w
        xi = (xb - x0) / w
        om = 1 - xi
        denom = torch.addcmul(s, torch.add(d0 + d1, s, alpha=-2), xi * om)
        sxi = s * xi
        y = torch.addcdiv(y0 - self.bound, h * xi * torch.addcmul(sxi, d0, om), denom)
        ladj = self._log_slope(s, xi, om, d0, d1, denom)
        return torch.where(inside, y, x), torch.where(inside, ladj, 0.0)

    def inverse(self, y, params):
        yb, inside, w, h, x0, y0, d0, d1 = self._locate(y, params, 1)
        s = h / w
        dy = yb - y0
        curv = torch.add(d0 + d1, s, alpha=-2)
        # xi solves a xi^2 + b xi + c = 0 (Durkan et al., eqs. 6-8); the root below avoids cancellation.
        a = torch.addcmul(h * (s - d0), dy, curv)
        b = torch.addcmul(h * d0, dy, curv, value=-1)
        c = -s * dy
        xi = (2 * c) / (-b - torch.sqrt((b * b - 4 * a * c).clamp_min(0)))
        om = 1 - xi
        x = torch.addcmul(x0 - self.bound, xi, w)
        denom = torch.addcmul(s, curv, xi * om)
        ladj = self._log_slope(s, xi, om, d0, d1, denom)
        return torch.where(inside, x, y), torch.where(inside, -ladj, 0.0)

    def __repr__(self) -> str:
        return f"RQSpline(bins={self.bins}, bound={self.bound})"
