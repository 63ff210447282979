"""A Bernoulli decoder's output ``Linear`` and its log-likelihood as one op.

``bernoulli_linear_log_prob(h, weight, bias, x) = sum_j x_j l_j - softplus(l_j)`` with
``l = h W^T + b``: the last layer of a Bernoulli MLP decoder and the density it feeds,
so a backend may fuse the two (`.fused` applies the incoming gradient on the
narrow hidden side of the products instead of on the logits).

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference

__all__ = ["bernoulli_linear_log_prob", "FUSED_MIN_NUMEL", "FUSED_DTYPES"]

_NAME = "bernoulli_linear_log_prob"

# The size rule: "auto" runs the fused backend once the largest input (the hidden units
# h [*S, B, H] of a many-particle step) has this many entries; below it the saving over
# the reference's fused torch kernels does not pay for a Python autograd node.
FUSED_MIN_NUMEL = 1 << 18
# Half precisions would form the summed density in the low precision: reference only.
FUSED_DTYPES = (torch.float32, torch.float64)


def _limits(h: Tensor, x: Tensor) -> list[str]:
    """Why the fused backend cannot take this call (each an obstacle, not a preference)."""
    limits = []
    if torch.is_autocast_enabled(h.device.type):
        limits.append("autocast is enabled (the fused forward would form the density in the low precision)")
    if x.requires_grad:
        limits.append("x requires a gradient (the fused backward gives none to the data)")
    return limits


def bernoulli_linear_log_prob(
    h: Tensor, weight: Tensor, bias: Tensor, x: Tensor, *, backend: str | None = None
) -> Tensor:
    """Bernoulli log-likelihood of ``x`` under the logits ``l = h W^T + b``: ``sum_j x_j l_j - softplus(l_j)``.

    Equal in value and gradient (to rounding) to
    ``-binary_cross_entropy_with_logits(F.linear(h, weight, bias), x.expand(...), reduction="none").sum(-1)``.

    Backends: ``"reference"`` (`.reference`) and ``"fused"`` (`.fused`, one
    autograd node with a hand-derived backward, float32 and float64).  The size rule:
    ``"auto"`` picks ``"fused"`` when the largest input has at least
    `FUSED_MIN_NUMEL` entries and nothing rules it out (a ``torch.func``
    transform, autocast, ``x`` requiring a gradient, another dtype); otherwise
    ``"reference"``.  Traced by ``torch.compile``, the op is the reference whatever the
    backend setting (Inductor fuses its ops itself).

    Args:
        h: ``[*S, B, H]`` the last hidden layer (``S`` particle dimensions, possibly none).
        weight: ``[D, H]`` the output layer's weight (``nn.Linear`` layout).
        bias: ``[D]`` its bias.
        x: ``[B, D]`` the data, entries in ``{0, 1}`` (real values use the same formula).
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the
            `vitorch.kernels.backend` context (see `vitorch.kernels.dispatch`).

    Returns:
        ``[*S, B]``: the log-likelihood of each datum under each particle's logits.

    Raises:
        ValueError: if the shapes do not fit together, or the dtypes differ outside autocast.
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    Example:
        >>> h, w, b = torch.randn(5, 3, 8), torch.randn(4, 8), torch.zeros(4)
        >>> x = torch.bernoulli(torch.full((3, 4), 0.5))
        >>> bernoulli_linear_log_prob(h, w, b, x).shape
        torch.Size([5, 3])

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
    """
    if x.dim() != 2 or h.dim() < 2 or h.shape[-2] != x.shape[0] or weight.shape != (x.shape[1], h.shape[-1]):
        raise ValueError(
            f"{_NAME}: shapes h {tuple(h.shape)}, weight {tuple(weight.shape)}, x {tuple(x.shape)} "
            "do not fit (h [*S, B, H], weight [D, H], x [B, D])"
        )
    if bias.shape != (x.shape[1],):
        raise ValueError(f"{_NAME}: bias must be [D] = [{x.shape[1]}]; got {tuple(bias.shape)}")
    autocast = torch.is_autocast_enabled(h.device.type)
    if not autocast and not (h.dtype == weight.dtype == bias.dtype == x.dtype):
        raise ValueError(f"{_NAME}: dtypes differ: h {h.dtype}, weight {weight.dtype}, bias {bias.dtype}, x {x.dtype}")
    choice = dispatch.choose(
        _NAME,
        h,
        weight,
        bias,
        x,
        backend=backend,
        dtypes=None,  # no Triton backend
        limits=_limits(h, x),
        fused=FUSED_DTYPES,
        fused_min_numel=FUSED_MIN_NUMEL,
    )
    if choice == "fused":
        return fused.bernoulli_linear_log_prob(h, weight, bias, x)
    return reference.bernoulli_linear_log_prob(h, weight, bias, x)
