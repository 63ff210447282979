"""Prior mean functions ``m(X) -> [N]``: zero and a learnable constant."""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ZeroMean", "ConstantMean"]


class ZeroMean(nn.Module):
    """``m(x) = 0``.

    Shapes: ``m(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 2.7.
    """

    def forward(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])


class ConstantMean(nn.Module):
    """``m(x) = c`` with ``c`` learnable.

    Args:
        constant: initial value (finite).

    Raises:
        ValueError: if ``constant`` is NaN or infinite.

    Shapes: ``m(x [N, D]) -> [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006), section 2.7.
    """

    def __init__(self, constant: float = 0.0):
        super().__init__()
        c = torch.as_tensor(constant, dtype=torch.get_default_dtype())
        if not bool(torch.isfinite(c).all()):
            raise ValueError(f"ConstantMean: constant must be finite; got {c.tolist()}")
        self.constant = nn.Parameter(c.reshape(()))

    def forward(self, x: Tensor) -> Tensor:
        return self.constant.expand(x.shape[0])
