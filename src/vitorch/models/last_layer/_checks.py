"""Input checks shared by the last-layer heads: bad input raises ``ValueError`` naming the culprit."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def positive_int(owner: str, name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive integer; got {value!r}")
    return value


def positive_float(owner: str, name: str, value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{owner}: {name} must be a positive finite number; got {value!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{owner}: {name} must be a positive finite number; got {value!r}")
    return v


def all_finite(t: Tensor) -> bool:
    """Whether every entry is finite; one reduction in the common case (a NaN or inf makes the sum non-finite)."""
    if math.isfinite(float(t.detach().sum())):
        return True
    return bool(torch.isfinite(t).all())  # the sum may have overflowed; decide entry by entry


def features(owner: str, phi: Tensor, in_features: int, values: bool = True) -> Tensor:
    """Check ``phi [N, in_features]``: a floating-point matrix, finite unless ``values=False``.

    ``values=False`` keeps only the checks that read no tensor data (type, shape,
    dtype): a training step's loss uses it, since a finiteness test costs a reduction
    and a read back per step; a NaN feature there gives a NaN loss instead, which
    `vitorch.fit` reports with its step.
    """
    if not isinstance(phi, Tensor):
        raise ValueError(f"{owner}: phi must be a tensor of shape [N, {in_features}]; got {type(phi).__name__}")
    if phi.dim() != 2 or phi.shape[-1] != in_features:
        raise ValueError(f"{owner}: phi must have shape [N, {in_features}]; got {tuple(phi.shape)}")
    if not phi.is_floating_point():
        raise ValueError(f"{owner}: phi must be floating point; got {phi.dtype}")
    if values and not all_finite(phi):
        raise ValueError(f"{owner}: phi must be finite; found NaN or infinite features")
    return phi


def targets(owner: str, y: Tensor, n: int, out_features: int, values: bool = True) -> Tensor:
    """Check real targets and return them as ``[N, O]``; ``[N]`` is accepted when ``O = 1``.

    ``values=False`` skips the finiteness test, as in `features`.
    """
    if not isinstance(y, Tensor):
        raise ValueError(f"{owner}: y must be a tensor; got {type(y).__name__}")
    if y.dim() == 1 and out_features == 1:
        y = y.unsqueeze(-1)
    if y.shape != (n, out_features):
        expected = f"[{n}]" + (f" or [{n}, 1]" if out_features == 1 else f" / [{n}, {out_features}]")
        raise ValueError(f"{owner}: y must have shape {expected} to match phi; got {tuple(y.shape)}")
    if values and not all_finite(y):
        raise ValueError(f"{owner}: y must be finite; found NaN or infinite targets")
    return y


def labels(owner: str, y: Tensor, n: int, num_classes: int) -> Tensor:
    """Check integer class labels ``[N]`` in ``{0, ..., num_classes - 1}``."""
    if not isinstance(y, Tensor) or y.dtype in (torch.bool,) or y.is_floating_point() or y.is_complex():
        raise ValueError(f"{owner}: y must be an integer tensor of class labels; got {getattr(y, 'dtype', type(y))}")
    if y.shape != (n,):
        raise ValueError(f"{owner}: y must have shape [{n}] to match phi; got {tuple(y.shape)}")
    if n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        lo, hi = int(y.min()), int(y.max())
        raise ValueError(f"{owner}: labels must lie in [0, {num_classes - 1}]; got range [{lo}, {hi}]")
    return y


def num_data(owner: str, value, batch: int) -> int:
    positive_int(owner, "num_data", value)
    if value < batch:
        raise ValueError(f"{owner}: num_data ({value}) must be at least the batch size ({batch})")
    return value
