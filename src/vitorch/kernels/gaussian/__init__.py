"""Kernel 1: diagonal-Gaussian ``rsample_and_log_prob`` for ``K`` particles."""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import reference

__all__ = ["diag_normal_rsample_and_log_prob"]

_NAME = "diag_normal_rsample_and_log_prob"


def draw_seed() -> int:
    """A kernel seed from torch's default generator, so ``torch.manual_seed`` reproduces the draw."""
    return int(torch.randint(0, 2**31 - 1, (), dtype=torch.int64))


def diag_normal_rsample_and_log_prob(
    loc: Tensor,
    scale: Tensor,
    sample_shape: torch.Size | tuple[int, ...] = (),
    *,
    stop_log_q: bool = False,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Reparameterized draws from ``N(loc, diag(scale^2))`` and their log-density, fused.

    Args:
        loc: ``[*batch, D]`` mean.
        scale: ``[*batch, D]`` positive standard deviations (same shape as ``loc``).
        sample_shape: leading shape of the draw, e.g. ``(K,)``.
        stop_log_q: return log q at stopped parameters (gradient only through
            ``z``), as STL and DReG need; the value is unchanged.
        backend: ``"auto"`` (default context), ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``z [*sample, *batch, D]`` and ``log_q [*sample, *batch]``.

    Raises:
        ValueError: if ``loc`` and ``scale`` differ in shape or have no event dimension.
        KernelUnavailableError: if ``backend="triton"`` cannot run here.

    References:
        Kingma & Welling (2014); Roeder et al., Sticking the Landing (2017).
    """
    if loc.dim() < 1 or loc.shape != scale.shape:
        raise ValueError(
            f"{_NAME}: loc and scale must share a shape [*batch, D]; got {tuple(loc.shape)} and {tuple(scale.shape)}"
        )
    sample_shape = torch.Size(sample_shape)
    limits = ["the sample shape is empty (K = 0)"] if sample_shape.numel() == 0 else []
    if dispatch.choose(_NAME, loc, scale, backend=backend, limits=limits) == "reference":
        return reference.rsample_and_log_prob(loc, scale, sample_shape, stop_log_q)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from . import triton as impl

    seed = draw_seed()
    K = sample_shape.numel()
    D = loc.shape[-1]
    flat = (-1, D)
    z, log_q = impl.DiagNormalRsample.apply(
        loc.reshape(flat).contiguous(), scale.reshape(flat).contiguous(), K, seed, stop_log_q
    )
    return z.reshape(sample_shape + loc.shape), log_q.reshape(sample_shape + loc.shape[:-1])
