"""Hidden-unit activations: ``tanh`` with a fused backend through torch's ``sigmoid`` kernel.

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016),
    section 5 (the 784-200-200-50 tanh MLP).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference

__all__ = ["tanh", "FUSED_MIN_NUMEL", "FUSED_DTYPES"]

# The size rule: "auto" runs the fused backend from this many entries on; below it the
# cost of a Python autograd node exceeds what the cheaper kernel saves.
FUSED_MIN_NUMEL = 1 << 16
# In a half precision the formula's absolute rounding error (a few ulps of 1) is large
# next to small activations: reference only.
FUSED_DTYPES = (torch.float32, torch.float64)


def tanh(x: Tensor, *, backend: str | None = None) -> Tensor:
    """``tanh(x)`` elementwise, any shape.

    Backends: ``"reference"`` (``torch.tanh``) and ``"fused"`` (``2 sigmoid(2x) - 1``
    with torch's ``tanh_backward``; float32 and float64; absolute error against
    ``torch.tanh`` at most a few ulps of 1, see `.fused`).  The size rule:
    ``"auto"`` picks ``"fused"`` from `FUSED_MIN_NUMEL` entries on, unless a
    ``torch.func`` transform is active; otherwise ``"reference"``.  Traced by
    ``torch.compile``, the op is the reference whatever the backend setting (Inductor
    fuses its ops itself).

    Args:
        x: any shape.
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the
            `vitorch.kernels.backend` context.

    Returns:
        ``tanh(x)``, the shape and dtype of ``x``.

    Raises:
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    Example:
        >>> tanh(torch.zeros(3))
        tensor([0., 0., 0.])

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
    """
    choice = dispatch.choose(
        "tanh",
        x,
        backend=backend,
        dtypes=None,  # no Triton backend
        fused=FUSED_DTYPES,
        fused_min_numel=FUSED_MIN_NUMEL,
    )
    if choice == "fused":
        return fused.tanh(x)
    return reference.tanh(x)
