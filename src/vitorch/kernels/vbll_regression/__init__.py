"""VBLL regression bounds: ``(expected_log_lik [B], penalty [])`` for the homoscedastic and heteroscedastic heads.

Backends: ``"reference"`` (:mod:`.reference`, autograd through readable torch, every
:class:`RowCovariance` structure) and ``"fused"`` (:mod:`.fused`, one autograd node with
hand-derived gradients, for a ``"scale_tril"`` ``q(W)`` and, in the heteroscedastic op, a
``"diagonal"`` or ``"scale_tril"`` ``q(U)``; float32 and float64).  The size rule:
``"auto"`` picks ``"fused"`` wherever it applies, at every size, since it does the
reference's products in fewer passes.  It applies to Python-number prior variances (a
tensor goes to the reference), and, by the dispatcher's rule, neither while
``torch.compile`` traces nor under a ``torch.func`` transform.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference
from .reference import RowCovariance

__all__ = ["vbll_regression_terms", "vbll_heteroscedastic_terms", "RowCovariance", "FUSED_DTYPES"]

FUSED_DTYPES = (torch.float32, torch.float64)
# The size rule: none (see the module docstring).
FUSED_MIN_NUMEL = None


def _limits(prior_variances: tuple, **covariances: tuple[RowCovariance, tuple[str, ...]]) -> list[str]:
    """Why the fused backend cannot take this call (``covariances``: name -> (its structure, the kinds fused takes))."""
    limits = []
    if any(isinstance(v, Tensor) for v in prior_variances):
        limits.append("a prior variance is a tensor (the fused backend caches its constants per number)")
    for name, (cov, kinds) in covariances.items():
        if not isinstance(cov, RowCovariance) or cov.kind not in kinds:
            kind = cov.kind if isinstance(cov, RowCovariance) else type(cov).__name__
            limits.append(f"{name} has structure {kind!r}; the fused backend takes {' or '.join(map(repr, kinds))}")
    return limits


def _check_shapes(op: str, phi: Tensor, y: Tensor, **rows: Tensor) -> None:
    """Shapes and dtypes only (no values are read): ``phi [B, D]``, ``y [B, O]``, each ``rows`` tensor ``[O, D]``."""
    if phi.dim() != 2 or y.dim() != 2 or y.shape[0] != phi.shape[0]:
        raise ValueError(f"{op}: phi must be [B, D] and y [B, O]; got {tuple(phi.shape)} and {tuple(y.shape)}")
    if y.dtype != phi.dtype:
        raise ValueError(f"{op}: y must have phi's dtype {phi.dtype}; got {y.dtype}")
    expected = (y.shape[1], phi.shape[1])
    for name, t in rows.items():
        if tuple(t.shape) != expected:
            raise ValueError(f"{op}: {name} must be [O, D] = {list(expected)}; got {tuple(t.shape)}")


def vbll_regression_terms(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    log_noise_variance: Tensor,
    prior_variance: Tensor | float,
    wishart_a: float = 0.0,
    wishart_psi: float = 0.0,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Homoscedastic VBLL regression: per-datum ``E_q log N(y_n | W phi_n, diag(v))`` and the penalty.

    ``penalty = KL(q(W) || N(0, s^2 I)) + sum_i (a log v_i + psi / (2 v_i))`` (the second sum is
    minus the inverse-Wishart log prior of a learned noise; pass ``a = psi = 0`` for a fixed
    one), so ``sum_n expected_log_lik_n - penalty`` is the bound on the full data
    (:func:`.reference.regression_terms` states it in full).

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` posterior means.
        cov: ``q(W)``'s row covariances (:class:`RowCovariance`).
        log_noise_variance: ``[O]`` log noise variances.
        prior_variance: ``s^2``, a number (or a 0-d tensor, which the reference takes).
        wishart_a: ``(nu + O + 1) / 2`` of a learned noise's inverse-Wishart prior, else 0.
        wishart_psi: ``psi`` of that prior, else 0.
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the
            :func:`vitorch.kernels.backend` context.

    Returns:
        ``(expected_log_lik [B], penalty [])``.

    Raises:
        ValueError: on inconsistent shapes.
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """
    _check_shapes("vbll_regression_terms", phi, y, mean=mean)
    limits = _limits((prior_variance,), cov=(cov, ("scale_tril",)))
    choice = dispatch.choose(
        "vbll_regression_terms", phi, y, mean, *cov.params, log_noise_variance, backend=backend, dtypes=None,
        limits=limits, fused=FUSED_DTYPES, fused_min_numel=FUSED_MIN_NUMEL,
    )  # fmt: skip
    if choice == "fused":
        (raw,) = cov.params
        return fused.RegressionTerms.apply(
            phi, y, mean, raw, log_noise_variance, prior_variance, wishart_a, wishart_psi
        )
    return reference.regression_terms(phi, y, mean, cov, log_noise_variance, prior_variance, wishart_a, wishart_psi)


def vbll_heteroscedastic_terms(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    noise_mean: Tensor,
    noise_cov: RowCovariance,
    offset: Tensor,
    prior_variance: Tensor | float,
    noise_prior_variance: Tensor | float,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Heteroscedastic VBLL regression (log-variance ``u_i^T phi + c_i``, ``q(U)`` Gaussian): the terms.

    ``expected_log_lik_n = -1/2 sum_i [log 2 pi + mu_ni + exp(-mu_ni + t_ni / 2) ((y_ni -
    m_i^T phi_n)^2 + phi_n^T S_i phi_n)]`` with the log-variance's moments ``mu``, ``t``
    under ``q(U)`` (exact), and ``penalty = KL(q(W) || p(W)) + KL(q(U) || p(U))``
    (:func:`.reference.heteroscedastic_terms`).

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
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the context.

    Returns:
        ``(expected_log_lik [B], penalty [])``.

    Raises:
        ValueError: on inconsistent shapes.
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
        Lázaro-Gredilla & Titsias, *Variational Heteroscedastic Gaussian Process
        Regression* (ICML 2011).
    """
    _check_shapes("vbll_heteroscedastic_terms", phi, y, mean=mean, noise_mean=noise_mean)
    limits = _limits(
        (prior_variance, noise_prior_variance), cov=(cov, ("scale_tril",)), noise_cov=(noise_cov, ("diagonal", "scale_tril"))
    )
    choice = dispatch.choose(
        "vbll_heteroscedastic_terms", phi, y, mean, *cov.params, noise_mean, *noise_cov.params, offset,
        backend=backend, dtypes=None, limits=limits, fused=FUSED_DTYPES, fused_min_numel=FUSED_MIN_NUMEL,
    )  # fmt: skip
    if choice == "fused":
        (raw,) = cov.params
        if noise_cov.kind == "diagonal":
            (u_log_var,) = noise_cov.params
            return fused.HeteroscedasticTerms.apply(
                phi, y, mean, raw, noise_mean, u_log_var, offset, prior_variance, noise_prior_variance
            )
        (u_raw,) = noise_cov.params
        return fused.HeteroscedasticDenseTerms.apply(
            phi, y, mean, raw, noise_mean, u_raw, offset, prior_variance, noise_prior_variance
        )
    return reference.heteroscedastic_terms(
        phi, y, mean, cov, noise_mean, noise_cov, offset, prior_variance, noise_prior_variance
    )
