"""Helpers shared by the test bases: exact comparison of module state, tolerances from the dtype."""

from __future__ import annotations

import io
import math

import torch
from torch import Tensor

__all__ = ["state_differences", "snapshot", "round_trip", "t_quantile", "Z"]

# Standard errors per stochastic assertion: two-sided p ~ 2e-7, so a few hundred such
# assertions stay within TESTING.md's budget of 1e-4 false failures per run.
Z = 5.2


def t_quantile(z: float, dof: int) -> float:
    """Student-t quantile matching the normal quantile ``z`` (Cornish-Fisher, two terms).

    A standard error estimated from ``dof + 1`` draws widens the normal threshold by
    ``(z^3 + z) / (4 dof) + (5 z^5 + 16 z^3 + 3 z) / (96 dof^2)`` (Abramowitz & Stegun 26.7.5).
    """
    if dof < 1:
        raise ValueError(f"t_quantile needs dof >= 1; got {dof}")
    return z + (z**3 + z) / (4 * dof) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * dof**2)


def snapshot(obj):
    """A deep copy of a ``state_dict`` (or any value in it): tensors cloned and detached."""
    if isinstance(obj, Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def state_differences(a, b, prefix: str = "") -> list[str]:
    """Every entry where two states differ, bit for bit (dtype, shape and value; NaN equals NaN)."""
    where = prefix or "<root>"
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return [f"{where}: {type(a).__name__} vs {type(b).__name__}"]
        if a.dtype != b.dtype or a.shape != b.shape:
            return [f"{where}: {a.dtype} {tuple(a.shape)} vs {b.dtype} {tuple(b.shape)}"]
        if not torch.equal(a.detach().cpu(), b.detach().cpu()):
            if a.is_floating_point() or a.is_complex():
                same = (a == b) | (torch.isnan(a) & torch.isnan(b))
                if bool(same.all()):
                    return []
                diff = (a.detach() - b.detach()).abs().max().item()
                return [f"{where}: values differ (largest difference {diff:.3g})"]
            return [f"{where}: values differ"]
        return []
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        if set(a) != set(b):
            out.append(
                f"{where}: keys only in the first {sorted(set(a) - set(b), key=str)}, "
                f"only in the second {sorted(set(b) - set(a), key=str)}"
            )
        for k in a:
            if k in b:
                out += state_differences(a[k], b[k], f"{prefix}.{k}" if prefix else str(k))
        return out
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if type(a) is not type(b) or len(a) != len(b):
            return [f"{where}: {type(a).__name__}[{len(a)}] vs {type(b).__name__}[{len(b)}]"]
        out = []
        for i, (x, y) in enumerate(zip(a, b)):
            out += state_differences(x, y, f"{prefix}[{i}]")
        return out
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return []
    if type(a) is not type(b) or a != b:
        return [f"{where}: {a!r} vs {b!r}"]
    return []


def round_trip(obj):
    """``obj`` written with ``torch.save`` and read back with ``torch.load(weights_only=True)``."""
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)
