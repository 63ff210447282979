"""Type-II maximum likelihood for a linear-Gaussian last layer: shared prior scale, one noise per output.

Model, for features ``Phi [N, D]`` and targets ``Y [N, O]``: every row ``w_i ~ N(0,
alpha^{-1} I)`` (one prior precision ``alpha = 1 / s^2`` for all rows) and ``y_ni ~
N(w_i^T phi_n, beta_i^{-1})`` (one noise precision per output).  The log evidence is a
sum of independent Bayesian linear regressions,

    log p(Y) = sum_i 1/2 [D log alpha + N log beta_i - log|A_i| - N log 2 pi
                          - beta_i ||y_i - Phi m_i||^2 - alpha ||m_i||^2],

with ``A_i = beta_i Phi^T Phi + alpha I`` and ``m_i = beta_i A_i^{-1} Phi^T y_i``
(Bishop, *PRML*, eq. 3.86).  Setting its derivatives to zero gives MacKay's fixed
point, here with the prior shared across outputs:

    gamma_i = sum_j beta_i lambda_j / (beta_i lambda_j + alpha),
    alpha   = sum_i gamma_i / sum_i ||m_i||^2,
    beta_i  = (N - gamma_i) / ||y_i - Phi m_i||^2,

where ``lambda_j`` are the eigenvalues of ``Phi^T Phi``.  One symmetric eigensolve up
front makes every iteration a handful of ``[D, O]`` operations: in the eigenbasis
``V`` of ``Phi^T Phi`` the posterior mean is ``V^T m_i = beta_i c_i / (beta_i lambda +
alpha)`` with ``c_i = V^T Phi^T y_i``, so no iteration factorizes a matrix.

References:
    MacKay, *Bayesian Interpolation* (Neural Computation, 1992); Bishop, *Pattern
    Recognition and Machine Learning* (2006), Sec. 3.5.2.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_LOG_2PI = math.log(2 * math.pi)


def log_evidence(phi: Tensor, y: Tensor, log_prior_scale: Tensor, log_noise_variance: Tensor) -> Tensor:
    """``log p(Y | Phi)`` of the model above, a scalar, differentiable in both hyperparameters.

    Args:
        phi: ``[N, D]`` features.
        y: ``[N, O]`` targets.
        log_prior_scale: scalar ``log s`` (``alpha = s^{-2}``).
        log_noise_variance: ``[O]`` ``log sigma_i^2`` (``beta_i = sigma_i^{-2}``).
    """
    lam, vecs = torch.linalg.eigh(phi.mT @ phi)
    c = vecs.mT @ (phi.mT @ y)  # [D, O]
    return _evidence_terms(phi, y, lam.clamp_min(0), vecs, c, log_prior_scale, log_noise_variance)[0]


def _evidence_terms(phi, y, lam, vecs, c, log_s, log_v):
    """``(log evidence, gamma [O], ||m_i||^2 [O], ||y_i - Phi m_i||^2 [O])`` at ``(log s, log v [O])``."""
    n, d = phi.shape
    alpha, beta = (-2 * log_s).exp(), (-log_v).exp()  # scalar, [O]
    denom = beta * lam[:, None] + alpha  # [D, O], the eigenvalues of A_i
    mu = beta * c / denom  # V^T m_i, [D, O]
    gamma = (beta * lam[:, None] / denom).sum(0)  # [O]
    m_sq = mu.pow(2).sum(0)  # [O]
    # the residual directly (not ||y||^2 - 2 mu.c + ...), which cancels when the fit is close
    resid = (y - phi @ (vecs @ mu)).pow(2).sum(0)  # [O]
    per_output = d * (-2 * log_s) - n * log_v - denom.log().sum(0) - n * _LOG_2PI - beta * resid - alpha * m_sq
    return 0.5 * per_output.sum(), gamma, m_sq, resid


def tune(
    phi: Tensor, y: Tensor, log_prior_scale: Tensor, log_noise_variance: Tensor, max_iters: int, tol: float
) -> tuple[Tensor, Tensor]:
    """MacKay's fixed point from the given start; returns ``(log s, log sigma^2 [O])``.

    Stops when every log-hyperparameter moves less than ``tol``, or after ``max_iters``
    iterations.  Raises ``ValueError`` when the evidence has no finite maximizer (for
    instance features that are all zero, where the prior scale runs off to infinity).
    """
    n = phi.shape[0]
    lam, vecs = torch.linalg.eigh(phi.mT @ phi)
    lam = lam.clamp_min(0)  # round-off can make the smallest eigenvalues slightly negative
    c = vecs.mT @ (phi.mT @ y)
    log_s, log_v = log_prior_scale.to(phi), log_noise_variance.to(phi)
    for _ in range(max_iters):
        _, gamma, m_sq, resid = _evidence_terms(phi, y, lam, vecs, c, log_s, log_v)
        new_s = 0.5 * (m_sq.sum().log() - gamma.sum().log())
        new_v = resid.log() - (n - gamma).log()
        if not bool(torch.isfinite(new_s)) or not bool(torch.isfinite(new_v).all()):
            raise ValueError(
                "tune: the evidence has no finite maximizer for these features and targets "
                f"(prior scale {float(new_s.exp()):.3g}, noise variances {new_v.exp().tolist()}); "
                "are the features all zero, or do they fit the targets exactly?"
            )
        step = max(float((new_s - log_s).abs()), float((new_v - log_v).abs().max()))
        log_s, log_v = new_s, new_v
        if step < tol:
            break
    return log_s, log_v
