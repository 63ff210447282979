"""VBLL regression bounds in readable torch: per-datum expected log-likelihoods and the global penalty.

A variational Bayesian last layer (Harrison, Willes & Snoek, 2024) has weights ``W [O, D]``
with independent Gaussian rows under ``q(W) = prod_i N(m_i, S_i)`` and prior ``N(0, s^2 I)``.
For a minibatch ``phi [B, D]``, ``y [B, O]`` its deterministic bound splits into

* ``expected_log_lik [B]``: ``E_q log p(y_n | phi_n, W, ...)``, exact in closed form, and
* ``penalty []``: ``KL(q || p)`` of the global latents, minus the log prior density of any
  point-estimated noise parameter (its regularizer; zero when the noise is fixed),

so that ``sum_n expected_log_lik_n - penalty`` is the full-data bound.  For a minibatch
of a data set of ``N``, `bound_and_loss` then gives ``bound [B] = expected_log_lik
- penalty / N`` (each datum's share of the full-data bound) and ``loss = -mean(bound)``,
exactly as `vitorch.LossOutput.from_terms` does.  This module is the specification
and the CPU path; `.fused` computes the same values with hand-derived gradients.

A row covariance is named by its structure (`RowCovariance`), so that this
module reads nothing from the model classes that store it.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1;
    Lázaro-Gredilla & Titsias, *Variational Heteroscedastic Gaussian Process
    Regression* (ICML 2011) for ``E_q exp(-l) = exp(-mu + t/2)``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "RowCovariance",
    "quad_trace_log_det",
    "gaussian_rows_kl",
    "regression_terms",
    "heteroscedastic_terms",
    "bound_and_loss",
    "regression_bound",
    "heteroscedastic_bound",
]

_LOG_2PI = math.log(2 * math.pi)
KINDS = ("scale_tril", "precision_tril", "diagonal", "low_rank")


class RowCovariance(NamedTuple):
    """The row covariances ``S_i [D, D]`` of ``q(W)``, ``i = 1..O``, by structure.

    ``kind`` and ``params``:

    * ``"scale_tril"``: ``(raw [O, D, D],)``, the raw Cholesky factor of ``S = L L^T``:
      ``L = tril(raw, -1) + diag(exp(diag(raw)))`` (strict lower triangle as stored, diagonal
      on the log scale; the strict upper triangle is not read);
    * ``"precision_tril"``: the same for a factor of the precision, ``S = (L L^T)^{-1}``;
    * ``"diagonal"``: ``(log_var [O, D],)``, ``S = diag(exp(log_var))``;
    * ``"low_rank"``: ``(factor [O, D, R], log_diag [O, D])``, ``S = U U^T + diag(exp(log_diag))``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024): the
        row-independent Gaussian weight posteriors.
    """

    kind: str
    params: tuple[Tensor, ...]


def _tril(raw: Tensor) -> tuple[Tensor, Tensor]:
    """``(L, log diag L)`` from the raw factor."""
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    return raw.tril(-1) + torch.diag_embed(log_diag.exp()), log_diag


def quad_trace_log_det(cov: RowCovariance, phi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(phi_n^T S_i phi_n [B, O], tr S_i [O], log|S_i| [O])`` for ``phi [B, D]``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """
    if cov.kind == "scale_tril":
        tril, log_diag = _tril(*cov.params)
        # phi^T L L^T phi = ||L^T phi||^2
        return torch.matmul(phi, tril).pow(2).sum(-1).mT, tril.pow(2).sum((-2, -1)), 2 * log_diag.sum(-1)
    if cov.kind == "precision_tril":
        tril, log_diag = _tril(*cov.params)
        o, d = log_diag.shape
        # phi^T (L L^T)^{-1} phi = ||L^{-1} phi||^2; tr S = ||L^{-1}||_F^2
        cols = torch.linalg.solve_triangular(tril, phi.mT.expand(o, d, phi.shape[0]), upper=False)
        eye = torch.eye(d, dtype=phi.dtype, device=phi.device).expand(o, d, d)
        inv = torch.linalg.solve_triangular(tril, eye, upper=False)
        return cols.pow(2).sum(-2).mT, inv.pow(2).sum((-2, -1)), -2 * log_diag.sum(-1)
    if cov.kind == "diagonal":
        (log_var,) = cov.params
        var = log_var.exp()
        return phi.pow(2) @ var.mT, var.sum(-1), log_var.sum(-1)
    if cov.kind == "low_rank":
        factor, log_diag = cov.params
        diag = log_diag.exp()
        quad = torch.einsum("nd,odr->nor", phi, factor).pow(2).sum(-1) + phi.pow(2) @ diag.mT
        # matrix determinant lemma: |U U^T + D| = |D| |I + U^T D^{-1} U|
        eye = torch.eye(factor.shape[-1], dtype=phi.dtype, device=phi.device)
        cap = factor.mT @ (factor / diag.unsqueeze(-1)) + eye
        log_det = log_diag.sum(-1) + 2 * torch.linalg.cholesky(cap).diagonal(dim1=-2, dim2=-1).log().sum(-1)
        return quad, factor.pow(2).sum((-2, -1)) + diag.sum(-1), log_det
    raise ValueError(f"RowCovariance: kind must be one of {KINDS}; got {cov.kind!r}")


def _log(x: Tensor | float) -> Tensor | float:
    return x.log() if isinstance(x, Tensor) else math.log(x)


def gaussian_rows_kl(mean: Tensor, trace: Tensor, log_det: Tensor, prior_variance: Tensor | float) -> Tensor:
    """``KL(N(m_i, S_i) || N(0, v I))`` per row, ``[O]``, from ``mean [O, D]``, ``tr S_i [O]`` and ``log|S_i| [O]``.

    ``KL = 1/2 [(tr S + m^T m) / v - D + D log v - log|S|]``.

    References:
        Bishop, *Pattern Recognition and Machine Learning* (2006), Sec. 2.3: the KL
        divergence between Gaussians.
    """
    d = mean.shape[-1]
    return 0.5 * ((trace + mean.pow(2).sum(-1)) / prior_variance - log_det + d * (_log(prior_variance) - 1))


def regression_terms(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    log_noise_variance: Tensor,
    prior_variance: Tensor | float,
    wishart_a: float = 0.0,
    wishart_psi: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Homoscedastic VBLL regression: ``(expected_log_lik [B], penalty [])``.

    ``E_q log N(y_n | W phi_n, diag(v)) = -1/2 sum_i [((y_ni - m_i^T phi_n)^2 + phi_n^T S_i phi_n) / v_i
    + log v_i + log 2 pi]`` and ``penalty = sum_i KL(q(w_i) || N(0, s^2 I)) + sum_i (a log v_i
    + psi / (2 v_i))``, the second sum minus the inverse-Wishart log-density ``log IW(diag(v) |
    psi I, nu)`` up to a constant (``a = (nu + O + 1) / 2``; zeros for a fixed noise).

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` posterior means ``m_i``.
        cov: the row covariances (`RowCovariance`).
        log_noise_variance: ``[O]`` ``log v_i``.
        prior_variance: ``s^2`` (a float or a 0-d tensor).
        wishart_a: ``a`` of the noise prior.
        wishart_psi: ``psi`` of the noise prior.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """
    quad, trace, log_det = quad_trace_log_det(cov, phi)
    resid = y - phi @ mean.mT  # [B, O]
    expected = -0.5 * ((resid.pow(2) + quad) / log_noise_variance.exp() + log_noise_variance + _LOG_2PI).sum(-1)
    kl = gaussian_rows_kl(mean, trace, log_det, prior_variance).sum()
    noise = (wishart_a * log_noise_variance + 0.5 * wishart_psi * (-log_noise_variance).exp()).sum()
    return expected, kl + noise


def heteroscedastic_terms(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    noise_mean: Tensor,
    noise_cov: RowCovariance,
    offset: Tensor,
    prior_variance: Tensor | float,
    noise_prior_variance: Tensor | float,
) -> tuple[Tensor, Tensor]:
    """Heteroscedastic VBLL regression: ``(expected_log_lik [B], penalty [])``.

    The log-variance ``l_ni = u_i^T phi_n + c_i`` is Gaussian under ``q(U)`` with mean
    ``mu_ni`` and variance ``t_ni = phi_n^T S^u_i phi_n``, so ``E exp(-l) = exp(-mu + t/2)``
    and, exactly,

        E_q log N(y_ni | w_i^T phi_n, e^l) = -1/2 [log 2 pi + mu + exp(-mu + t/2) ((y - m^T phi)^2 + phi^T S phi)];

    ``penalty = KL(q(W) || N(0, s^2 I)) + KL(q(U) || N(0, s_u^2 I))`` (the offset ``c`` is a
    point estimate without a prior).

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` means of ``q(W)``.
        cov: ``q(W)``'s row covariances.
        noise_mean: ``[O, D]`` means of ``q(U)``.
        noise_cov: ``q(U)``'s row covariances.
        offset: ``[O]`` the log-variance offset ``c``.
        prior_variance: ``s^2``.
        noise_prior_variance: ``s_u^2``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
        Lázaro-Gredilla & Titsias, *Variational Heteroscedastic Gaussian Process
        Regression* (ICML 2011).
    """
    quad, trace, log_det = quad_trace_log_det(cov, phi)
    t, trace_u, log_det_u = quad_trace_log_det(noise_cov, phi)
    mu = phi @ noise_mean.mT + offset  # [B, O]
    sq = (y - phi @ mean.mT).pow(2) + quad
    expected = -0.5 * (_LOG_2PI + mu + torch.exp(-mu + 0.5 * t) * sq).sum(-1)
    kl = gaussian_rows_kl(mean, trace, log_det, prior_variance).sum()
    kl_u = gaussian_rows_kl(noise_mean, trace_u, log_det_u, noise_prior_variance).sum()
    return expected, kl + kl_u


def bound_and_loss(expected_log_lik: Tensor, penalty: Tensor, num_data: int) -> tuple[Tensor, Tensor]:
    """``(bound [B], loss [])`` with ``bound = expected_log_lik - penalty / N`` and ``loss = -mean(bound)``.

    What `vitorch.LossOutput.from_terms` computes from the same terms.

    References:
        Hoffman, Blei, Wang & Paisley, *Stochastic Variational Inference* (JMLR 2013): the
        minibatch estimate of a global-latent ELBO.
    """
    bound = expected_log_lik - penalty / num_data
    return bound, -bound.mean()


def regression_bound(phi, y, mean, cov, log_noise_variance, prior_variance, num_data, wishart_a=0.0, wishart_psi=0.0):
    """`bound_and_loss` of `regression_terms`: ``(bound [B], loss [])``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """
    terms = regression_terms(phi, y, mean, cov, log_noise_variance, prior_variance, wishart_a, wishart_psi)
    return bound_and_loss(*terms, num_data)


def heteroscedastic_bound(
    phi, y, mean, cov, noise_mean, noise_cov, offset, prior_variance, noise_prior_variance, num_data
):
    """`bound_and_loss` of `heteroscedastic_terms`: ``(bound [B], loss [])``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
    """
    terms = heteroscedastic_terms(
        phi, y, mean, cov, noise_mean, noise_cov, offset, prior_variance, noise_prior_variance
    )
    return bound_and_loss(*terms, num_data)
