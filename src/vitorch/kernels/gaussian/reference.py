"""Diagonal-Gaussian ``rsample_and_log_prob`` for ``K`` particles, in torch: the specification.

``z = loc + scale * eps`` with ``eps ~ N(0, I)`` and

    log q(z) = -||eps||^2 / 2 - sum_d log scale_d - D log(2 pi) / 2,

read from the noise (no division by ``scale``).  The *stopped* variant returns
the same value but with log q evaluated at stopped parameters, so its gradient
reaches ``loc`` and ``scale`` only through ``z``: this is what sticking the
landing (Roeder et al., 2017) and DReG (Tucker et al., 2019) need, in one pass.

The noise is an argument of `rsample_and_log_prob_from_noise`, which is
what the Triton kernel is compared with: the kernel draws its noise in-kernel
from a counter-based generator (Philox) that torch does not expose, so the two
backends' draws differ; the kernel's noise is tested statistically and
everything else deterministically given that noise.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014).
    Roeder, Wu & Duvenaud, Sticking the Landing (2017).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def rsample_and_log_prob_from_noise(loc: Tensor, scale: Tensor, eps: Tensor, stop_log_q: bool = False):
    """``(z, log q(z))`` for given noise.

    Args:
        loc: ``[*batch, D]`` mean.
        scale: ``[*batch, D]`` standard deviations (positive).
        eps: ``[*sample, *batch, D]`` standard normal noise.
        stop_log_q: evaluate log q at stopped parameters (gradient only through ``z``).

    Returns:
        ``z [*sample, *batch, D]`` and ``log_q [*sample, *batch]``.
    """
    z = loc + scale * eps
    d = loc.shape[-1]
    if stop_log_q:
        loc_s, scale_s = loc.detach(), scale.detach()
        # A diagonal factor is perfectly conditioned: dividing the rounded z - loc by scale
        # loses only the rounding of z itself, so the noise need not be carried along.
        u = (z - loc_s) / scale_s
        log_q = -0.5 * u.pow(2).sum(-1) - (scale_s.log().sum(-1) + 0.5 * d * _LOG_2PI)
    else:
        # The noise's quadratic term and the constant carry no gradient, so the graph holds
        # only the log-determinant's log, sum and one subtraction.
        log_q = eps.pow(2).sum(-1).add(d * _LOG_2PI).mul(-0.5) - scale.log().sum(-1)
    return z, log_q


def rsample_and_log_prob(loc: Tensor, scale: Tensor, sample_shape: torch.Size, stop_log_q: bool = False):
    """Draw ``eps`` from torch's generator and call `rsample_and_log_prob_from_noise`."""
    eps = torch.randn(torch.Size(sample_shape) + loc.shape, dtype=loc.dtype, device=loc.device)
    return rsample_and_log_prob_from_noise(loc, scale, eps, stop_log_q)
