"""Positive hyperparameters stored unconstrained through softplus.

A kernel's lengthscale, a variance or a noise level is kept as ``raw`` with
``value = softplus(raw) + floor``, so gradient steps can never make it
non-positive; the tiny floor keeps a collapsing value from underflowing to an
exact zero (a singular kernel matrix) in float32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PositiveParam", "as_float_tensor"]

_FLOOR = 1e-12


def as_float_tensor(value, name: str, owner: str) -> Tensor:
    """``value`` as a floating tensor of the default dtype (unless already floating)."""
    t = value.detach().clone() if isinstance(value, Tensor) else torch.as_tensor(value)
    if not t.is_floating_point():
        t = t.to(torch.get_default_dtype())
    return t


def _inverse_softplus(y: Tensor) -> Tensor:
    # log(expm1(y)) loses precision for large y, where softplus is the identity anyway.
    y = (y - _FLOOR).clamp_min(1e-30)
    return torch.where(y > 20, y, torch.log(torch.expm1(y)))


class PositiveParam(nn.Module):
    """One positive, finite hyperparameter (scalar or vector, e.g. ARD lengthscales).

    Args:
        value: initial value(s), each positive and finite.
        name: the parameter's name in error messages.
        owner: the owning module's name in error messages.
        learn: make it a trainable ``nn.Parameter`` (else a buffer).

    Raises:
        ValueError: naming ``name`` and the constraint, if any value is ``<= 0``, infinite or NaN.
    """

    def __init__(self, value, name: str, owner: str, learn: bool = True):
        super().__init__()
        self.name, self.owner = name, owner
        t = as_float_tensor(value, name, owner)
        self._check(t)
        raw = _inverse_softplus(t)
        if learn:
            self.raw = nn.Parameter(raw)
        else:
            self.register_buffer("raw", raw)

    def _check(self, t: Tensor) -> None:
        ok = (t > 0) & torch.isfinite(t)
        if not bool(ok.all()):
            bad = t[~ok].flatten()[:4].tolist()
            raise ValueError(
                f"{self.owner}: {self.name} must be positive and finite; found {bad} (shape {tuple(t.shape)})"
            )

    def forward(self) -> Tensor:
        return F.softplus(self.raw) + _FLOOR

    def set(self, value) -> None:
        """Overwrite the value in place (checked like the constructor's)."""
        t = as_float_tensor(value, self.name, self.owner).to(self.raw.device, self.raw.dtype)
        self._check(t)
        with torch.no_grad():
            self.raw.copy_(_inverse_softplus(t).expand_as(self.raw))

    def check(self) -> None:
        """Raise ``ValueError`` if the current value is NaN or infinite (e.g. after a diverged step)."""
        self._check(self.forward().detach())
