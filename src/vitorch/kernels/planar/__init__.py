"""Kernel 5: a planar-flow stack, every layer applied per row in one kernel with the log-determinant."""

from __future__ import annotations

from torch import Tensor

from .. import dispatch
from . import reference

__all__ = ["planar_stack"]

MAX_D = 256  # mirrors triton.MAX_D without importing Triton


def planar_stack(x: Tensor, u: Tensor, w: Tensor, b: Tensor, *, backend: str | None = None) -> tuple[Tensor, Tensor]:
    """``L`` planar layers ``x -> x + u_l tanh(w_l^T x + b_l)`` and their summed log-determinant.

    Args:
        x: ``[*shape, D]`` inputs (e.g. base noise ``[K, B, D]``).
        u: ``[L, D]`` reparameterized ``u_hat`` (as `vitorch.flows.Planar` computes it).
        w: ``[L, D]``.
        b: ``[L]``.
        backend: ``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``.

    Returns:
        ``y [*shape, D]`` and ``ladj [*shape]``.

    Raises:
        ValueError: if the parameter shapes do not match ``[L, D]``, ``[L, D]``, ``[L]``
            (per-row parameters of amortized flows are not supported here).

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (2015).
    """
    D = x.shape[-1] if x.dim() else 0
    L = u.shape[0] if u.dim() else 0
    if x.dim() < 1 or u.shape != (L, D) or w.shape != (L, D) or b.shape != (L,):
        raise ValueError(
            "planar_stack: expected x [*shape, D], u [L, D], w [L, D], b [L]; got "
            f"x {tuple(x.shape)}, u {tuple(u.shape)}, w {tuple(w.shape)}, b {tuple(b.shape)}"
        )
    limits = [f"D = {D} exceeds {MAX_D}"] if D > MAX_D else []
    if dispatch.choose("planar_stack", x, u, w, b, backend=backend, limits=limits) == "reference":
        return reference.planar_stack(x, u, w, b)
    # Lazy on purpose: importing vitorch.kernels must never import Triton.
    from .triton import PlanarStack

    y, ladj = PlanarStack.apply(x.reshape(-1, D).contiguous(), u.contiguous(), w.contiguous(), b.contiguous())
    return y.reshape(x.shape), ladj.reshape(x.shape[:-1])
