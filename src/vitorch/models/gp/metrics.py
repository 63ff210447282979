"""Test-set scores: root-mean-square error and negative log predictive density.

``nlpd`` averages ``-log p(y_n | x_n, data)`` over the test points; for a
Gaussian predictive ``N(mean_n, var_n)`` it is available in closed form, and for
any other likelihood `SVGP.log_predictive` supplies the log densities.
"""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["rmse", "nlpd", "gaussian_nlpd"]


def rmse(y: Tensor, mean: Tensor) -> Tensor:
    """``sqrt(mean((y - mean)^2))``, a scalar; ``y`` and ``mean`` are ``[N]``.

    References:
        Quiñonero-Candela, Rasmussen, Sinz, Bousquet & Schölkopf, *Evaluating Predictive Uncertainty
        Challenge* (MLCW 2005, LNCS 3944, 2006).
    """
    if y.shape != mean.shape:
        raise ValueError(f"rmse: shapes differ: y {tuple(y.shape)} and mean {tuple(mean.shape)}")
    return (y - mean).pow(2).mean().sqrt()


def nlpd(log_predictive: Tensor) -> Tensor:
    """Negative mean of per-point log predictive densities ``[N]``, a scalar.

    References:
        Quiñonero-Candela, Rasmussen, Sinz, Bousquet & Schölkopf, *Evaluating Predictive Uncertainty
        Challenge* (MLCW 2005, LNCS 3944, 2006).
    """
    return -log_predictive.mean()


def gaussian_nlpd(y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
    """NLPD of a Gaussian predictive ``N(mean, var)`` for targets ``y``; all ``[N]``, result scalar.

    Raises:
        ValueError: if any predictive variance is not positive.

    References:
        Quiñonero-Candela, Rasmussen, Sinz, Bousquet & Schölkopf, *Evaluating Predictive Uncertainty
        Challenge* (MLCW 2005, LNCS 3944, 2006).
    """
    if not bool((var > 0).all()):
        raise ValueError("gaussian_nlpd: predictive variance var must be positive")
    return 0.5 * (math.log(2 * math.pi) + var.log() + (y - mean).pow(2) / var).mean()
