"""Full-precision densities under ``torch.autocast``.

Autocast runs matrix products in bfloat16 or float16, which is where mixed precision
earns its speed (2-3x on a CPU with AVX512-BF16, more on GPU tensor cores).  But a
network's output then arrives in the low precision too, and a log-density formed
from it is not accurate enough for variational inference: bfloat16 keeps 8
significant bits, so a 784-pixel Bernoulli log-likelihood near -150 nats is rounded
to the nearest nat, and importance weights ``exp(log p - log q)`` amplify such errors.
The library therefore promotes every network output that parameterizes a
distribution back to float32 *before* the density or the particles are formed: the
matrix products keep autocast's speed, the densities keep float32's accuracy
(Micikevicius et al. keep losses and reductions in float32 for the same reason).

References:
    Micikevicius et al., *Mixed Precision Training* (ICLR 2018).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["full_precision"]

_LOW = (torch.bfloat16, torch.float16)


def full_precision(t: Tensor) -> Tensor:
    """``t`` as float32 if autocast produced it in a low precision, else ``t`` itself (no copy).

    Args:
        t: a network output of any shape.

    Returns:
        The same values, float32 when ``t`` is bfloat16/float16 and autocast is
        enabled on its device; otherwise ``t`` unchanged (a model kept in bfloat16 by
        its user stays bfloat16).

    References:
        Micikevicius et al., *Mixed Precision Training* (ICLR 2018).
    """
    if t.dtype in _LOW and torch.is_autocast_enabled(t.device.type):
        return t.float()
    return t
