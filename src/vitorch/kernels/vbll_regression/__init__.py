"""VBLL regression bounds: ``(bound [B], loss [])`` for the homoscedastic and heteroscedastic heads.

For a minibatch of ``B`` out of ``N`` data, ``bound_n = E_q log p(y_n | phi_n, ...) -
penalty / N`` (each datum's share of the full-data bound) and ``loss = -mean(bound)``: what
`vitorch.LossOutput.from_terms` builds from the expected log-likelihoods and the
penalty of `.reference` (``*_terms``), computed in one call.

Backends: ``"reference"`` (`.reference`, autograd through readable torch, every
`RowCovariance` structure) and ``"fused"`` (`.fused`, one autograd node with
hand-derived gradients, for a ``"scale_tril"`` ``q(W)`` and, in the heteroscedastic op, a
``"diagonal"`` or ``"scale_tril"`` ``q(U)``; float32 and float64; prior variances given as
numbers).  The size rule: ``"auto"`` picks ``"fused"`` wherever it applies, at every size,
since it does the reference's products in fewer passes (and, by the dispatcher's rule,
neither while ``torch.compile`` traces nor under a ``torch.func`` transform).

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import dispatch
from . import fused, reference
from .reference import RowCovariance

__all__ = ["vbll_regression_bound", "vbll_heteroscedastic_bound", "RowCovariance", "FUSED_DTYPES"]

FUSED_DTYPES = (torch.float32, torch.float64)
# The size rule: none (see the module docstring).
FUSED_MIN_NUMEL = None


_W_KINDS, _U_KINDS = ("scale_tril",), ("diagonal", "scale_tril")


def _limits(prior_variances: tuple, **covariances: tuple[RowCovariance, tuple[str, ...]]) -> list[str]:
    """Why the fused backend cannot take this call (``covariances``: name -> (its structure, the kinds fused takes)).

    Called only when the fast test in the op finds a reason (a training step builds no strings).
    """
    limits = []
    if any(isinstance(v, Tensor) for v in prior_variances):
        limits.append("a prior variance is a tensor (the fused backend caches its constants per number)")
    for name, (cov, kinds) in covariances.items():
        if not isinstance(cov, RowCovariance) or cov.kind not in kinds:
            kind = cov.kind if isinstance(cov, RowCovariance) else type(cov).__name__
            limits.append(f"{name} has structure {kind!r}; the fused backend takes {' or '.join(map(repr, kinds))}")
    return limits


def _check(op: str, phi: Tensor, y: Tensor, num_data: int, **rows: Tensor) -> None:
    """Shapes, dtypes and ``num_data`` (no values are read): ``phi [B, D]``, ``y [B, O]``, ``rows`` ``[O, D]``."""
    if phi.dim() != 2 or y.dim() != 2 or y.shape[0] != phi.shape[0] or phi.shape[0] == 0:
        raise ValueError(f"{op}: phi must be [B, D] and y [B, O] with B > 0; got {tuple(phi.shape)}, {tuple(y.shape)}")
    if y.dtype != phi.dtype:
        raise ValueError(f"{op}: y must have phi's dtype {phi.dtype}; got {y.dtype}")
    o, d = y.shape[1], phi.shape[1]
    for name, t in rows.items():
        if t.dim() != 2 or t.shape[0] != o or t.shape[1] != d:
            raise ValueError(f"{op}: {name} must be [O, D] = [{o}, {d}]; got {tuple(t.shape)}")
    if isinstance(num_data, bool) or not isinstance(num_data, int) or num_data < 1:
        raise ValueError(f"{op}: num_data must be a positive integer; got {num_data!r}")


def vbll_regression_bound(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    log_noise_variance: Tensor,
    prior_variance: float | Tensor,
    num_data: int,
    wishart_a: float = 0.0,
    wishart_psi: float = 0.0,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Homoscedastic VBLL regression: the per-datum bound and the minibatch loss.

    ``bound_n = E_q log N(y_n | W phi_n, diag(v)) - penalty / N`` with ``penalty =
    KL(q(W) || N(0, s^2 I)) + sum_i (a log v_i + psi / (2 v_i))`` (the second sum is minus
    the inverse-Wishart log prior of a learned noise; ``a = psi = 0`` for a fixed one), and
    ``loss = -mean(bound)``; `.reference.regression_terms` states the terms in full.

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` posterior means.
        cov: ``q(W)``'s row covariances (`RowCovariance`).
        log_noise_variance: ``[O]`` log noise variances.
        prior_variance: ``s^2``, a number (a 0-d tensor goes to the reference).
        num_data: N, the size of the data set the batch was drawn from.
        wishart_a: ``(nu + O + 1) / 2`` of a learned noise's inverse-Wishart prior, else 0.
        wishart_psi: ``psi`` of that prior, else 0.
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the
            `vitorch.kernels.backend` context.

    Returns:
        ``(bound [B], loss [])``, both differentiable.

    Raises:
        ValueError: on inconsistent shapes, an empty batch or a bad ``num_data``.
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.1.
    """
    _check("vbll_regression_bound", phi, y, num_data, mean=mean)
    limits = ()
    if cov.kind not in _W_KINDS or isinstance(prior_variance, Tensor):
        limits = _limits((prior_variance,), cov=(cov, _W_KINDS))
    # the dtype of the features decides (the others must match it for either backend)
    choice = dispatch.choose(
        "vbll_regression_bound",
        phi,
        mean,
        backend=backend,
        dtypes=None,
        limits=limits,
        fused=FUSED_DTYPES,
        fused_min_numel=FUSED_MIN_NUMEL,
    )
    if choice == "fused":
        (raw,) = cov.params
        return fused.RegressionBound.apply(
            phi, y, mean, raw, log_noise_variance, prior_variance, num_data, wishart_a, wishart_psi
        )
    return reference.regression_bound(
        phi, y, mean, cov, log_noise_variance, prior_variance, num_data, wishart_a, wishart_psi
    )


def vbll_heteroscedastic_bound(
    phi: Tensor,
    y: Tensor,
    mean: Tensor,
    cov: RowCovariance,
    noise_mean: Tensor,
    noise_cov: RowCovariance,
    offset: Tensor,
    prior_variance: float | Tensor,
    noise_prior_variance: float | Tensor,
    num_data: int,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Heteroscedastic VBLL regression (log-variance ``u_i^T phi + c_i``, Gaussian ``q(U)``): bound and loss.

    ``bound_n = -1/2 sum_i [log 2 pi + mu_ni + exp(-mu_ni + t_ni / 2) ((y_ni - m_i^T phi_n)^2 +
    phi_n^T S_i phi_n)] - penalty / N``, exact, with the log-variance's moments ``mu``, ``t``
    under ``q(U)`` and ``penalty = KL(q(W) || p(W)) + KL(q(U) || p(U))``; ``loss =
    -mean(bound)`` (`.reference.heteroscedastic_terms`).

    Args:
        phi: ``[B, D]`` features.
        y: ``[B, O]`` targets.
        mean: ``[O, D]`` means of ``q(W)``.
        cov: ``q(W)``'s row covariances.
        noise_mean: ``[O, D]`` means of ``q(U)``.
        noise_cov: ``q(U)``'s row covariances.
        offset: ``[O]`` the log-variance offset ``c``.
        prior_variance: ``s^2``, a number (a 0-d tensor goes to the reference).
        noise_prior_variance: ``s_u^2``, likewise.
        num_data: N, the size of the data set the batch was drawn from.
        backend: ``"auto"``, ``"reference"``, ``"fused"``, or ``None`` for the context.

    Returns:
        ``(bound [B], loss [])``, both differentiable.

    Raises:
        ValueError: on inconsistent shapes, an empty batch or a bad ``num_data``.
        KernelUnavailableError: if a forced backend cannot run here (every reason listed).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
        Lázaro-Gredilla & Titsias, *Variational Heteroscedastic Gaussian Process
        Regression* (ICML 2011).
    """
    _check("vbll_heteroscedastic_bound", phi, y, num_data, mean=mean, noise_mean=noise_mean)
    limits = ()
    if (
        cov.kind not in _W_KINDS
        or noise_cov.kind not in _U_KINDS
        or isinstance(prior_variance, Tensor)
        or isinstance(noise_prior_variance, Tensor)
    ):
        limits = _limits((prior_variance, noise_prior_variance), cov=(cov, _W_KINDS), noise_cov=(noise_cov, _U_KINDS))
    choice = dispatch.choose(
        "vbll_heteroscedastic_bound",
        phi,
        mean,
        noise_mean,
        backend=backend,
        dtypes=None,
        limits=limits,
        fused=FUSED_DTYPES,
        fused_min_numel=FUSED_MIN_NUMEL,
    )
    if choice == "fused":
        (raw,) = cov.params
        fn = fused.HeteroscedasticBound if noise_cov.kind == "diagonal" else fused.HeteroscedasticDenseBound
        (u_param,) = noise_cov.params
        return fn.apply(phi, y, mean, raw, noise_mean, u_param, offset, prior_variance, noise_prior_variance, num_data)
    return reference.heteroscedastic_bound(
        phi, y, mean, cov, noise_mean, noise_cov, offset, prior_variance, noise_prior_variance, num_data
    )
