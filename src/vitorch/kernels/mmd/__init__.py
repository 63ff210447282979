"""Kernel 3: unbiased MMD² with RBF and IMQ kernels as tiled pairwise sums."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .. import dispatch
from . import reference

__all__ = ["mmd"]

MAX_D = 128  # mirrors triton.MAX_D without importing Triton


def _scales(scale: float | Sequence[float]) -> list[float]:
    scales = [float(s) for s in (scale if isinstance(scale, (list, tuple)) else [scale])]
    if not scales or not all(0 < s < float("inf") for s in scales):
        raise ValueError(f"mmd: scale must be positive and finite; got {scale!r}")
    return scales


def mmd(
    z_q: Tensor, z_p: Tensor, kernel: str = "rbf", scale: float | Sequence[float] = 1.0, *, backend: str | None = None
) -> Tensor:
    """Unbiased squared MMD of two samples, as `vitorch.mmd.mmd`, without Gram matrices on the kernel path.

    Args:
        z_q: ``[*batch, n, D]`` samples (``n >= 2``).
        z_p: ``[*batch, m, D]`` samples (``m >= 2``); batch shapes broadcast.
        kernel: ``"rbf"`` or ``"imq"``.
        scale: bandwidth ``s`` or several, whose kernels are summed.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``[*batch]`` the MMD² estimate.

    Raises:
        ValueError: as `vitorch.mmd.mmd` (unknown kernel, bad scale, shapes, fewer than two samples).

    References:
        Gretton et al. (2012); Zhao, Song & Ermon, InfoVAE (2019).
    """
    scales = _scales(scale)
    if kernel not in ("rbf", "imq"):
        raise ValueError(f"mmd: kernel must be 'rbf' or 'imq'; got {kernel!r}")
    if z_q.dim() < 2 or z_p.dim() < 2 or z_q.shape[-1] != z_p.shape[-1]:
        raise ValueError(
            f"mmd: z_q and z_p must be [*batch, n, D] with the same D; got {tuple(z_q.shape)} and {tuple(z_p.shape)}"
        )
    if z_q.shape[-2] < 2 or z_p.shape[-2] < 2:
        raise ValueError(
            f"mmd: the unbiased estimate needs at least 2 samples on each side; got {z_q.shape[-2]} and {z_p.shape[-2]}"
        )
    try:
        batch = torch.broadcast_shapes(z_q.shape[:-2], z_p.shape[:-2])
    except RuntimeError:
        raise ValueError(f"mmd: batch shapes do not broadcast: {tuple(z_q.shape)} and {tuple(z_p.shape)}") from None
    D = z_q.shape[-1]
    limits = [f"D = {D} exceeds {MAX_D}"] if D > MAX_D else []
    if dispatch.choose("mmd", z_q, z_p, backend=backend, limits=limits) == "reference":
        return reference.mmd(z_q, z_p, kernel, scales)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import MMD

    n, m = z_q.shape[-2], z_p.shape[-2]
    x = z_q.expand(*batch, n, D).reshape(-1, n, D).contiguous()
    y = z_p.expand(*batch, m, D).reshape(-1, m, D).contiguous()
    s = torch.tensor(scales, dtype=torch.float32, device=z_q.device)
    return MMD.apply(x, y, s, kernel == "imq").reshape(batch)
