"""Hidden-unit activations in torch: the specification.

References:
    Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016),
    section 5 (the tanh MLP of the VAE benchmarks).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["tanh"]


def tanh(x: Tensor) -> Tensor:
    """``tanh(x)`` elementwise, any shape.

    References:
        Burda, Grosse & Salakhutdinov, *Importance Weighted Autoencoders* (ICLR 2016).
    """
    return torch.tanh(x)
