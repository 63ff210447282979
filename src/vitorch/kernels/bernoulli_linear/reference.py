"""A Bernoulli decoder's output layer and log-likelihood, in torch: the specification.

The last ``Linear`` of a Bernoulli decoder maps hidden units ``h`` to logits
``l = h W^T + b``, and the data are scored by

    log p(x | l) = sum_j x_j l_j - softplus(l_j)          (summed over the event)

which is ``-binary_cross_entropy_with_logits`` summed over the event.  The data
``x [B, D]`` broadcast over the particle dimensions of ``h [*S, B, H]``.

References:
    Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1
    (the Bernoulli MLP decoder).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["bernoulli_linear_log_prob"]


def bernoulli_linear_log_prob(h: Tensor, weight: Tensor, bias: Tensor, x: Tensor) -> Tensor:
    """``sum_j x_j l_j - softplus(l_j)`` with ``l = h W^T + b``.

    Args:
        h: ``[*S, B, H]`` hidden units.
        weight: ``[D, H]`` the output layer's weight (``nn.Linear`` layout).
        bias: ``[D]`` its bias.
        x: ``[B, D]`` the data (entries in ``{0, 1}``; real values use the same formula).

    Returns:
        ``[*S, B]`` the log-likelihood of each datum under each particle's logits.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014), appendix C.1.
    """
    logits = F.linear(h, weight, bias)  # [*S, B, D]
    # Under autocast the product arrives in a low precision; the density is formed in
    # the data's (wider) dtype, as every density in the library is.
    logits = logits.to(torch.promote_types(logits.dtype, x.dtype))
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)
