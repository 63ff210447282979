"""The power bounds: Rényi's ``L_alpha``, the χ upper bound CUBO, and VIS's forward χ².

All are the power mean ``(1/t) log (1/K) sum_k w_k^t`` of the importance weights
``w_k = p(x, z_k) / q(z_k | x)`` (``log_w [K, *batch] -> [*batch]``) at some ``t``:
``t = 1 - alpha`` in ``(-inf, 1]`` gives Rényi's lower bounds (``t = 1`` is IWAE, ``t -> 0``
the ELBO), ``t = n > 1`` the χ upper bound, which is descended, and ``t = 2`` without
the ``1/t`` the forward-χ² objective that the VIS guide descends.  Their DReG weights
follow from one rule, ``c - dc/dlog w`` with ``c = softmax(t log w)``.

The public names are re-exported by `vitorch.objectives`, which documents them.

References:
    Li & Turner, *Rényi Divergence Variational Inference* (NeurIPS 2016).
    Dieng, Tran, Ranganath, Paisley & Blei, *Variational Inference via χ Upper Bound
    Minimization* (NeurIPS 2017).
    Daudel, Benton, Shi & Doucet, *Alpha-divergence Variational Inference Meets
    Importance Weighted Auto-Encoders* (JMLR 2023).
    Li et al., *Forward χ² Divergence Based Variational Importance Sampling* (ICLR 2024): VIS.
"""

from __future__ import annotations

import math

from torch import Tensor

from . import _logspace as ls
from ._objectives_base import Objective, Split, weighted_power
from ._objectives_iw import elbo, iwae

__all__ = ["renyi", "cubo", "vis"]


class _Power(Objective):
    """``(1 / t) log (1/K) sum_k w_k^t``, the Monte Carlo Rényi bound with ``t = 1 - alpha``.

    Its DReG weights follow from the general rule ``c - dc/dlog w`` with
    ``c = softmax(t log w)``: ``(1 - t) c + t c^2`` (``alpha c + (1 - alpha) c^2``;
    Daudel, Benton, Shi & Doucet, *Alpha-divergence Variational Inference Meets
    Importance Weighted Auto-Encoders*, JMLR 2023).
    """

    takes_weights = True

    def __init__(self, t: float, name: str, upper: bool):
        self.t, self.name, self.upper = float(t), name, upper

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is not None:
            return weighted_power(log_w, weights, self.t)
        return ls.power_logmeanexp(log_w, self.t)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return ls.softmax(self.t * log_w, 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        c = ls.softmax(self.t * log_w, 0)
        return (1 - self.t) * c + self.t * c.pow(2)


def renyi(alpha: float) -> Objective:
    """Variational Rényi bound ``1/(1-alpha) log (1/K) sum_k w_k^(1-alpha)``, ``alpha >= 0``.

    Maps ``log_w [K, *batch]`` to ``[*batch]``.
    Li & Turner (2016), *Rényi Divergence Variational Inference*.  ``alpha = 0`` is
    IWAE and ``alpha -> 1`` the ELBO (returned exactly for ``alpha == 1``).  For
    ``alpha < 0`` the bound lies above ``log p(x)``; use `cubo` for that regime.
    """
    alpha = float(alpha)
    if not alpha >= 0 or math.isinf(alpha):
        raise ValueError(f"renyi: alpha must be finite and >= 0 (a lower bound); got {alpha!r}; for alpha < 0 use cubo")
    if alpha == 1.0:
        return elbo
    return _Power(1.0 - alpha, f"renyi(alpha={alpha:g})", upper=False)


def cubo(n: float = 2.0) -> Objective:
    """χ upper bound ``CUBO_n = (1/n) log (1/K) sum_k w_k^n >= log p(x)`` in expectation as K grows.

    Maps ``log_w [K, *batch]`` to ``[*batch]``.
    Dieng, Tran, Ranganath, Paisley & Blei (2017), *Variational Inference via χ Upper
    Bound Minimization*.  It is descended; ``n > 1``.
    """
    n = float(n)
    if not n > 1 or math.isinf(n):
        raise ValueError(f"cubo: n must be finite and > 1; got {n!r}")
    return _Power(n, f"cubo(n={n:g})", upper=True)


class _ForwardChi2(_Power):
    """``log (1/S) sum_s w_s^2``, the forward-χ² objective the VIS guide descends.

    Under the score-function estimator the guide follows the self-normalized
    gradient of ``log E_q[w^2]``, namely ``-sum_s w^_s grad log q(z_s)`` with
    ``w^ = softmax(2 log w)`` (Li et al., 2024), which takes no baseline.
    """

    takes_baseline = False

    def __init__(self):
        super().__init__(2.0, "forward_chi2", upper=True)

    def __call__(self, log_w: Tensor, weights: Tensor | None = None) -> Tensor:
        if weights is not None:
            return 2.0 * weighted_power(log_w, weights, 2.0)
        return ls.logmeanexp(2.0 * log_w, 0)

    def grad_coefficients(self, log_w: Tensor) -> Tensor:
        return 2.0 * ls.softmax(2.0 * log_w, 0)

    def dreg_coefficients(self, log_w: Tensor) -> Tensor:
        c = ls.softmax(2.0 * log_w, 0)
        return 2.0 * (2.0 * c.pow(2) - c)

    def score_coefficients(self, log_w: Tensor, baseline: Tensor | float = 0.0) -> Tensor:
        """Ascent weights of ``log q(z_s)``: the self-normalized weights ``w^_s``."""
        return ls.softmax(2.0 * log_w, 0)


def vis() -> Objective:
    """Variational importance sampling with the forward χ² divergence (Li et al., 2024, ICLR).

    Maps ``log_w [K, *batch]`` to the model's bound ``[*batch]``.

    The model ascends the importance-sampled ``log (1/S) sum_s w_s`` (IWAE); the guide
    descends ``log (1/S) sum_s w_s^2``, which is mass-covering.  Use it with
    ``reparam`` or with ``score()`` (the paper's self-normalized guide gradient,
    robust from a narrow initial guide).
    """
    return Split(iwae, _ForwardChi2(), "vis")
