"""Log-sum-exp and normalized weights along the particle dimension, in torch: the specification.

For log-weights ``log_w [K, *batch]`` (particles first):

    logsumexp(log_w) = log sum_k w_k                      (IWAE's bound, up to - log K)
    w~_k = w_k / sum_j w_j,   and  w~_k^2                (IWAE's and DReG's gradient weights)

following vitorch's convention (`vitorch._logspace`): log-weights are clamped
to ``[-1e30, 1e30]`` first, so a column whose particles are all ``-inf`` gets the
finite value ``-1e30 + log K`` and a zero (not NaN) gradient, and clamped entries
get zero normalized weight.

References:
    Burda, Grosse & Salakhutdinov, Importance Weighted Autoencoders (2016).
    Tucker, Lawson, Gu & Maddison, Doubly Reparameterized Gradient Estimators (2019).
"""

from __future__ import annotations

from torch import Tensor

from vitorch import _logspace


def logsumexp(log_w: Tensor) -> Tensor:
    """``[*batch]`` log-sum-exp over dim 0 of clamped log-weights; differentiable."""
    return _logspace.logsumexp(log_w, 0)


def normalized_weights(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """``(w~, w~^2)``, each ``[K, *batch]``, without gradient."""
    w = _logspace.softmax(log_w, 0)
    return w, w * w
