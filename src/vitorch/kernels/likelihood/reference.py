"""Decoder log-likelihoods reduced over the event dimension, in torch: the specification.

Both broadcast the data ``x [*batch, D]`` against particle-shaped parameters
``[*sample, *batch, D]`` and return ``[*sample, *batch]``:

    Bernoulli(logits l):    sum_d x_d l_d - softplus(l_d)
    Gaussian(mean m, s):    sum_d -((x_d - m_d) / s_d)^2 / 2 - log s_d - log(2 pi) / 2

Here the per-element terms are materialized (``[*sample, *batch, D]``), which is
what the fused kernel avoids.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014), appendix C.
"""

from __future__ import annotations

import math

from torch import Tensor
from torch.nn import functional as F

_LOG_2PI = math.log(2 * math.pi)


def bernoulli_log_lik(x: Tensor, logits: Tensor) -> Tensor:
    """``sum_d log Bernoulli(x_d | logits_d)``; ``x`` in [0, 1] (continuous values allowed)."""
    return (x * logits - F.softplus(logits)).sum(-1)


def gaussian_log_lik(x: Tensor, mean: Tensor, scale: Tensor) -> Tensor:
    """``sum_d log N(x_d | mean_d, scale_d^2)``."""
    u = (x - mean) / scale
    return (-0.5 * u.pow(2) - scale.log() - 0.5 * _LOG_2PI).sum(-1)
