"""Covariance functions as ``nn.Module``s: ``k(X1, X2) -> [N1, N2]`` and ``k.diag(X) -> [N]``.

Stationary kernels take one lengthscale or one per input dimension (ARD) and a
signal variance; every positive hyperparameter lives unconstrained behind a
softplus (`vitorch.models.gp._params.PositiveParam`).  Kernels combine
with ``k1 + k2``, ``k1 * k2`` and ``c * k`` (a learnable `Scale`).

Formulas (``r`` the lengthscale-scaled Euclidean distance, ``s^2`` the variance):

* RBF: ``s^2 exp(-r^2 / 2)``
* Matérn 1/2, 3/2, 5/2: ``s^2 exp(-r)``, ``s^2 (1 + √3 r) exp(-√3 r)``,
  ``s^2 (1 + √5 r + 5 r^2 / 3) exp(-√5 r)``
* rational quadratic: ``s^2 (1 + r^2 / (2 alpha))^(-alpha)``
* periodic (MacKay, 1998): ``s^2 exp(-2 sum_d sin^2(pi |x_d - x'_d| / p) / l_d^2)``
* linear: ``sum_d s_d^2 x_d x'_d``

References:
    Rasmussen & Williams, Gaussian Processes for Machine Learning (2006), ch. 4.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...kernels import rbf_cross
from ._params import PositiveParam

__all__ = [
    "Kernel",
    "Stationary",
    "RBF",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
    "Linear",
    "Sum",
    "Product",
    "Scale",
]


def _check_inputs(owner: str, x1: Tensor, x2: Tensor | None) -> None:
    if x1.dim() != 2:
        raise ValueError(f"{owner}: inputs must have shape [N, D]; got X1 of shape {tuple(x1.shape)}")
    if x2 is not None and (x2.dim() != 2 or x2.shape[-1] != x1.shape[-1]):
        raise ValueError(
            f"{owner}: inputs must share their last dimension D; got X1 {tuple(x1.shape)} and X2 {tuple(x2.shape)}"
        )


def _check_per_dim(owner: str, name: str, value: Tensor, d: int, inputs: str = "X") -> None:
    """A hyperparameter that may be per input dimension (ARD) is a scalar or ``[D]`` with ``D`` the inputs' width."""
    if value.numel() != 1 and (value.dim() != 1 or value.shape[0] != d):
        raise ValueError(
            f"{owner}: {name} has shape {tuple(value.shape)} (one entry per input dimension, ARD) but {inputs} "
            f"has D = {d} columns; give a scalar or a [{d}] {name}"
        )


class Kernel(nn.Module):
    """Base class: subclasses implement `forward` and `diag`.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), chapter 4.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:  # pragma: no cover - abstract
        """Covariance matrix ``[N1, N2]`` between ``x1 [N1, D]`` and ``x2 [N2, D]`` (``x1`` if None)."""
        raise NotImplementedError

    def diag(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``k(x_n, x_n)`` for each row of ``x [N, D]``, shape ``[N]``, without forming the matrix."""
        raise NotImplementedError

    # hyperparameters that may hold one value per input dimension (ARD), checked against the inputs' D
    _per_dim: tuple[str, ...] = ()

    def check_dims(self, d: int, inputs: str = "X") -> None:
        """Raise ``ValueError`` if a per-dimension (ARD) hyperparameter of this kernel or of a
        kernel inside it is neither a scalar nor ``[d]``; ``inputs`` names the data in the message.

        Shapes: ``d`` is ``D`` of inputs ``[N, D]``.
        """
        for module in self.modules():
            if isinstance(module, Kernel):
                for name in module._per_dim:
                    _check_per_dim(type(module).__name__, name, getattr(module, name), d, inputs)

    def __add__(self, other: Kernel) -> Sum:
        return Sum(self, other)

    def __mul__(self, other) -> Kernel:
        if isinstance(other, Kernel):
            return Product(self, other)
        return Scale(self, variance=other)

    __rmul__ = __mul__

    def check(self) -> None:
        """Raise ``ValueError`` naming any hyperparameter that has become NaN or infinite."""
        for m in self.modules():
            if isinstance(m, PositiveParam):
                m.check()


class Stationary(Kernel):
    """A kernel of the scaled distance ``r = ||(x - x') / lengthscale||``.

    Args:
        lengthscale: scalar, or ``[D]`` for one lengthscale per input dimension (ARD).
        variance: signal variance ``s^2``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section 4.2 (ARD, section 5.1).
    """

    _per_dim = ("lengthscale",)

    def __init__(self, lengthscale: float | Tensor = 1.0, variance: float | Tensor = 1.0):
        super().__init__()
        name = type(self).__name__
        self._lengthscale = PositiveParam(lengthscale, "lengthscale", name)
        self._variance = PositiveParam(variance, "variance", name)

    @property
    def lengthscale(self) -> Tensor:
        return self._lengthscale()

    @lengthscale.setter
    def lengthscale(self, value) -> None:
        self._lengthscale.set(value)

    @property
    def variance(self) -> Tensor:
        return self._variance()

    @variance.setter
    def variance(self, value) -> None:
        self._variance.set(value)

    def scaled_inputs(self, x1: Tensor, x2: Tensor | None) -> tuple[Tensor, Tensor]:
        """``x1 / l`` and ``x2 / l``, both shifted by the mean of the first to limit cancellation in distances."""
        _check_inputs(type(self).__name__, x1, x2)
        ell = self.lengthscale
        _check_per_dim(type(self).__name__, "lengthscale", ell, x1.shape[-1])
        a = x1 / ell
        b = a if x2 is None else x2 / ell
        shift = a.mean(0, keepdim=True).detach()
        return a - shift, b - shift

    def scaled_sqdist(self, x1: Tensor, x2: Tensor | None) -> Tensor:
        """``r^2 [N1, N2]`` through ``|a|^2 + |b|^2 - 2 a.b`` (one GEMM)."""
        a, b = self.scaled_inputs(x1, x2)
        # addmm fuses the product and the norms; clamp the rounding-negative entries.
        d = torch.addmm(a.pow(2).sum(-1, keepdim=True), a, b.mT, alpha=-2.0) + b.pow(2).sum(-1)
        d = d.clamp_min(0.0)
        if x2 is None:  # a point's distance to itself is exactly 0, not the expansion's rounding
            # (out of place, so the kernel stays batchable under torch.func.vmap)
            d = torch.where(torch.eye(d.shape[-1], dtype=torch.bool, device=d.device), 0.0, d)
        return d

    def scaled_dist(self, x1: Tensor, x2: Tensor | None) -> Tensor:
        # sqrt has an infinite derivative at 0; the floor zeroes the gradient there instead.
        return self.scaled_sqdist(x1, x2).clamp_min(1e-30).sqrt()

    def diag(self, x: Tensor) -> Tensor:
        return self.variance * x.new_ones(x.shape[0])


class RBF(Stationary):
    """Squared-exponential kernel ``s^2 exp(-r^2 / 2)``; see `Stationary` for the arguments.

    Evaluated by the kernel op `vitorch.kernels.rbf_cross` (a fused backward by default).

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), eq. 4.9.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        a, b = self.scaled_inputs(x1, x2)
        return rbf_cross(a, b, self.variance.log().reshape(()))


class Matern12(Stationary):
    """Matérn-1/2 (exponential) kernel ``s^2 exp(-r)``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.1.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return self.variance * torch.exp(-self.scaled_dist(x1, x2))


class Matern32(Stationary):
    """Matérn-3/2 kernel ``s^2 (1 + √3 r) exp(-√3 r)``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.1.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        r = math.sqrt(3.0) * self.scaled_dist(x1, x2)
        return self.variance * (1 + r) * torch.exp(-r)


class Matern52(Stationary):
    """Matérn-5/2 kernel ``s^2 (1 + √5 r + 5 r^2 / 3) exp(-√5 r)``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.1.
    """

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        d2 = self.scaled_sqdist(x1, x2)
        r = math.sqrt(5.0) * d2.clamp_min(1e-30).sqrt()
        return self.variance * (1 + r + (5.0 / 3.0) * d2) * torch.exp(-r)


class RationalQuadratic(Stationary):
    """Rational-quadratic kernel ``s^2 (1 + r^2 / (2 alpha))^(-alpha)``, a scale mixture of RBFs.

    Args:
        lengthscale: scalar or ``[D]`` (ARD).
        variance: signal variance.
        alpha: positive shape; ``alpha -> inf`` recovers the RBF.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.1.
    """

    def __init__(self, lengthscale: float | Tensor = 1.0, variance: float | Tensor = 1.0, alpha: float | Tensor = 1.0):
        super().__init__(lengthscale, variance)
        self._alpha = PositiveParam(alpha, "alpha", "RationalQuadratic")

    @property
    def alpha(self) -> Tensor:
        return self._alpha()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        alpha = self.alpha
        return self.variance * torch.exp(-alpha * torch.log1p(self.scaled_sqdist(x1, x2) / (2 * alpha)))


class Periodic(Stationary):
    """Periodic kernel ``s^2 exp(-2 sum_d sin^2(pi |x_d - x'_d| / period) / l_d^2)`` (MacKay, 1998).

    Args:
        lengthscale: scalar or ``[D]`` (ARD).
        variance: signal variance.
        period: positive period, scalar or ``[D]``.

    Costs ``O(N1 N2 D)`` memory for the pairwise differences.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        MacKay, *Introduction to Gaussian Processes* (NATO ASI Series F 168, 1998).
    """

    _per_dim = ("lengthscale", "period")

    def __init__(self, lengthscale: float | Tensor = 1.0, variance: float | Tensor = 1.0, period: float | Tensor = 1.0):
        super().__init__(lengthscale, variance)
        self._period = PositiveParam(period, "period", "Periodic")

    @property
    def period(self) -> Tensor:
        return self._period()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        _check_inputs("Periodic", x1, x2)
        period, ell = self.period, self.lengthscale
        _check_per_dim("Periodic", "period", period, x1.shape[-1])
        _check_per_dim("Periodic", "lengthscale", ell, x1.shape[-1])
        x2 = x1 if x2 is None else x2
        diff = x1.unsqueeze(-2) - x2.unsqueeze(-3)  # [N1, N2, D]
        s = torch.sin(math.pi * diff / period) / ell
        return self.variance * torch.exp(-2.0 * s.pow(2).sum(-1))


class Linear(Kernel):
    """Linear (dot-product) kernel ``sum_d s_d^2 x_d x'_d``.

    Args:
        variance: scalar, or ``[D]`` for one weight variance per input dimension.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section 4.2.2 (dot-product covariance).
    """

    _per_dim = ("variance",)

    def __init__(self, variance: float | Tensor = 1.0):
        super().__init__()
        self._variance = PositiveParam(variance, "variance", "Linear")

    @property
    def variance(self) -> Tensor:
        return self._variance()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        _check_inputs("Linear", x1, x2)
        variance = self.variance
        _check_per_dim("Linear", "variance", variance, x1.shape[-1])
        x2 = x1 if x2 is None else x2
        return (x1 * variance) @ x2.mT

    def diag(self, x: Tensor) -> Tensor:
        variance = self.variance
        _check_per_dim("Linear", "variance", variance, x.shape[-1])
        return (x.pow(2) * variance).sum(-1)


class Sum(Kernel):
    """``k1 + k2``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.4.
        Duvenaud, Lloyd, Grosse, Tenenbaum & Ghahramani, *Structure Discovery in Nonparametric
        Regression through Compositional Kernel Search* (ICML 2013).
    """

    def __init__(self, k1: Kernel, k2: Kernel):
        super().__init__()
        self.k1, self.k2 = k1, k2

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return self.k1(x1, x2) + self.k2(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        return self.k1.diag(x) + self.k2.diag(x)


class Product(Kernel):
    """``k1 * k2`` (elementwise), e.g. a locally periodic kernel ``Periodic * RBF``.

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.4.
        Duvenaud, Lloyd, Grosse, Tenenbaum & Ghahramani, *Structure Discovery in Nonparametric
        Regression through Compositional Kernel Search* (ICML 2013).
    """

    def __init__(self, k1: Kernel, k2: Kernel):
        super().__init__()
        self.k1, self.k2 = k1, k2

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return self.k1(x1, x2) * self.k2(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        return self.k1.diag(x) * self.k2.diag(x)


class Scale(Kernel):
    """``c * k`` with a learnable positive scale ``c`` (``variance``).

    Shapes: ``k(x1 [N1, D], x2 [N2, D]) -> [N1, N2]`` and ``k.diag(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 4.2.4.
    """

    def __init__(self, kernel: Kernel, variance=1.0):
        super().__init__()
        self.kernel = kernel
        self._variance = PositiveParam(variance, "variance", "Scale")

    @property
    def variance(self) -> Tensor:
        return self._variance()

    def forward(self, x1: Tensor, x2: Tensor | None = None) -> Tensor:
        return self.variance * self.kernel(x1, x2)

    def diag(self, x: Tensor) -> Tensor:
        return self.variance * self.kernel.diag(x)
