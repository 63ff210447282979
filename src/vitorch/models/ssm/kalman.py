"""Sequential Kalman filtering, Rauch–Tung–Striebel smoothing and forward-filtering backward-sampling.

Model (time-invariant, batched)::

    x_1 ~ N(m_1, P_1),   x_t = F x_{t-1} + w_t,  w_t ~ N(0, Q),
    y_t = H x_t + v_t,   v_t ~ N(0, R).

Every function here takes time as the *leading* dimension (``y [T, *B, p]``) and
is linear in the data: covariances never depend on ``y`` and are computed at the
parameters' batch shape, means at the data's.  That lets one call filter several
"mean columns" (the diffuse augmentation of de Jong, 1991) at the price of one.

Filtered covariances use the Joseph form ``(I - K H) P (I - K H)^T + K R K^T``,
which stays symmetric positive semi-definite under rounding, and innovations are
whitened through the Cholesky factor of ``S = H P H^T + R`` (no explicit inverse).

**Precision limit.**  A state direction that ``H`` does not see, with a growing
variance (an unstable unobserved mode: an eigenvalue ``|lambda| > 1`` of ``F`` whose
eigenvector lies in the null space of ``H``), makes ``H P H^T`` cancel terms of size
``|lambda|^(2t)``; once they exceed ``S / sqrt(eps)`` fewer than half the digits of
``S`` survive and the likelihood is rounding noise.  No update in the original
coordinates avoids this (Joseph form, or a square-root filter, which only doubles
the horizon), so `check_precision` refuses such a run with a ``ValueError``
naming the step instead of returning a wrong number.

References:
    Kalman, A New Approach to Linear Filtering and Prediction Problems (1960).
    Rauch, Tung & Striebel, Maximum Likelihood Estimates of Linear Dynamic Systems (1965).
    Frühwirth-Schnatter, Data Augmentation and Dynamic Linear Models (1994) (FFBS).
    Durbin & Koopman, Time Series Analysis by State Space Methods (2012), ch. 4.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "FilterResult",
    "kalman_filter",
    "rts_smoother",
    "backward_sample",
    "symmetrize",
    "psd_sqrt",
    "align",
    "mask_missing",
    "check_precision",
    "precision_error",
]

_LOG_2PI = math.log(2 * math.pi)


class FilterResult(NamedTuple):
    """Outputs of a Kalman filter, time first.

    Attributes:
        pred_means: ``[T, *B, D]`` predicted means ``E[x_t | y_{1:t-1}]``.
        pred_covs: ``[T, *Bp, D, D]`` predicted covariances.
        filt_means: ``[T, *B, D]`` filtered means ``E[x_t | y_{1:t}]``.
        filt_covs: ``[T, *Bp, D, D]`` filtered covariances.
        whitened: ``[T, *B, p]`` whitened innovations ``L_t^{-1} (y_t - H m_{t|t-1})`` (0 where missing).
        half_log_det: ``[T, *Bp]`` ``log|L_t|`` with ``S_t = L_t L_t^T`` (0 where missing).
        observed: ``[T, *B]`` boolean mask of observed steps, or ``None`` if all are.

    With missing steps, covariances take the mask's batch shape as well.

    References:
        Kalman, *A New Approach to Linear Filtering and Prediction Problems* (J. Basic Eng., 1960).
        Särkkä, *Bayesian Filtering and Smoothing* (Cambridge University Press, 2013), chapter 4.
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012): missing steps.
    """

    pred_means: Tensor
    pred_covs: Tensor
    filt_means: Tensor
    filt_covs: Tensor
    whitened: Tensor
    half_log_det: Tensor
    observed: Tensor | None = None

    def log_liks(self) -> Tensor:
        """``[T, *B]`` one-step predictive log-densities ``log p(y_t | y_{1:t-1})`` (0 where missing)."""
        p = self.whitened.shape[-1]
        quad = self.whitened.pow(2).sum(-1)
        hld = align(self.half_log_det, quad.dim(), 0)  # right-align [T, *Bp] against the data's [T, *B]
        const = 0.5 * p * _LOG_2PI
        if self.observed is not None:
            const = const * self.observed
        return -0.5 * quad - hld - const


def mask_missing(observed: Tensor | None, rank: int, w: Tensor, hld: Tensor) -> tuple[Tensor | None, Tensor, Tensor]:
    """Align the mask ``[T, *Bo]`` to ``rank`` dims and zero the innovation terms of missing steps."""
    if observed is None:
        return None, w, hld
    observed = align(observed, rank, 0)
    return observed, torch.where(observed.unsqueeze(-1), w, 0.0), torch.where(observed, align(hld, rank, 0), 0.0)


def precision_error(H: Tensor, R: Tensor, P: Tensor, observed: Tensor | None, who: str) -> str | None:
    """Why the innovation covariances ``S_t = H P_t H^T + R`` cannot be trusted, or ``None`` if they can.

    The rounding error of ``H P H^T + R`` is about ``eps * (|H| |P| |H|^T + |R|)``; when that
    bound's diagonal exceeds ``sqrt(eps)`` times ``S``'s (or ``S`` is not finite and positive),
    fewer than half of ``S``'s digits are left and neither the likelihood nor the update can be
    trusted.  Only observed steps count.

    Args:
        H: ``[*Bp, p, D]``; R: ``[*Bp, p, p]``; P: ``[T, *Bq, D, D]`` predicted covariances.
        observed: ``[T, *Bo]`` mask, right-aligned against ``P``'s batch (or ``None``).
        who: the caller's name for the message.
    """
    with torch.no_grad():
        S = ((H @ P) * H).sum(-1) + R.diagonal(dim1=-2, dim2=-1)  # [T, *Bq, p]
        scale = ((H.abs() @ P.abs()) * H.abs()).sum(-1) + R.diagonal(dim1=-2, dim2=-1).abs()
        tol = torch.finfo(P.dtype).eps ** 0.5
        bad = ~(scale * tol < S).all(-1)  # NaN and S <= 0 count as bad
        if observed is not None:
            rank = max(bad.dim(), observed.dim())
            bad = align(bad, rank, 0) & align(observed, rank, 0)
        if not bool(bad.any()):
            return None
        t = int(bad.reshape(bad.shape[0], -1).any(-1).nonzero()[0, 0])
        ratio = (scale / S.abs()).reshape(S.shape[0], -1)[t].amax().item()
        overflow = math.log10(torch.finfo(P.dtype).max) / 2
    return (
        f"{who}: the innovation covariance H P H^T + R at step {t} (0-based) cannot be resolved in {P.dtype}: "
        f"H P H^T cancels terms {ratio:.3g} times larger than the result, so fewer than half its digits are "
        "left and the likelihood would be rounding noise. The usual cause is an unstable state direction that "
        "H does not see (an eigenvalue |lambda| > 1 of F with its eigenvector in the null space of H): its "
        f"variance grows like |lambda|^(2t), passes S / sqrt(eps) after a few dozen steps and overflows "
        f"{P.dtype} near t = {overflow:.0f} / log10|lambda| (t ~ 875 for lambda = 1.5). Drop that direction "
        "from the state (it does not affect y), make it stable, or shorten the series."
    )


def check_precision(H: Tensor, R: Tensor, P: Tensor, observed: Tensor | None, who: str) -> None:
    """Raise `precision_error`'s message as a ``ValueError``, if there is one."""
    msg = precision_error(H, R, P, observed, who)
    if msg is not None:
        raise ValueError(msg)


def align(t: Tensor, rank: int, trailing: int) -> Tensor:
    """Insert singleton dims after dim 0 so ``t [T, *Bp, *trailing]`` has ``rank`` dims (right-aligned batch)."""
    return t.reshape(t.shape[0], *(1,) * (rank - t.dim()), *t.shape[1:])


def symmetrize(m: Tensor) -> Tensor:
    return 0.5 * (m + m.mT)


def _mv(m: Tensor, v: Tensor) -> Tensor:
    """``m [..., D, E] @ v [..., E]`` with broadcasting batch dims.

    Matrices here usually carry only the parameters' batch while vectors carry the
    data's, and ``matmul`` would expand the matrices into one tiny GEMM per series;
    for small ``E`` a sum of ``E`` broadcast column products avoids that expansion.
    """
    E = m.shape[-1]
    if E <= 4:
        out = m[..., 0] * v[..., 0:1]
        for j in range(1, E):
            out = out + m[..., j] * v[..., j : j + 1]
        return out
    return torch.einsum("...ij,...j->...i", m, v)


def _whiten(L: Tensor, v: Tensor) -> Tensor:
    """``L^{-1} v`` for lower-triangular ``L [..., p, p]`` of the parameters' batch and ``v [..., p]``."""
    eye = torch.eye(L.shape[-1], dtype=L.dtype, device=L.device)
    return _mv(torch.linalg.solve_triangular(L, eye, upper=False), v)


def psd_sqrt(cov: Tensor) -> Tensor:
    """A square root ``A`` with ``A A^T = cov`` for positive *semi*-definite ``cov [..., D, D]``.

    Cholesky fails on singular matrices (a state fixed by the data, a zero block of
    a diffuse prior), which are legitimate here, so we fall back to the symmetric
    eigen-root with negative rounding noise clipped to zero.
    """
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info == 0).all()):
        return chol
    evals, evecs = torch.linalg.eigh(symmetrize(cov))
    return evecs * evals.clamp_min(0).sqrt().unsqueeze(-2)


def update(m: Tensor, P: Tensor, y: Tensor, H: Tensor, R: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One Joseph-form measurement update.

    Args:
        m: ``[*B, D]`` predicted mean; P: ``[*Bp, D, D]`` predicted covariance.
        y: ``[*B, p]`` observation; H: ``[*Bp, p, D]``; R: ``[*Bp, p, p]``.

    Returns:
        Filtered mean and covariance, whitened innovation ``[*B, p]`` and ``log|L|`` ``[*Bp]``.
    """
    HP = H @ P
    S = symmetrize(HP @ H.mT + R)
    L, info = torch.linalg.cholesky_ex(S)
    if not bool((info == 0).all()):
        raise ValueError("Kalman update: innovation covariance H P H^T + R is not positive definite")
    K = torch.cholesky_solve(HP, L).mT  # P H^T S^{-1}
    v = y - _mv(H, m)
    m_f = m + _mv(K, v)
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    IKH = eye - K @ H
    P_f = symmetrize(IKH @ P @ IKH.mT + K @ R @ K.mT)
    return m_f, P_f, _whiten(L, v), L.diagonal(dim1=-2, dim2=-1).log().sum(-1)


def kalman_filter(
    F: Tensor, Q: Tensor, H: Tensor, R: Tensor, m1: Tensor, P1: Tensor, y: Tensor, observed: Tensor | None = None
) -> FilterResult:
    """Sequential Kalman filter; ``O(T)`` steps.

    Args:
        F: ``[*Bp, D, D]`` transition matrix; Q: ``[*Bp, D, D]`` transition covariance.
        H: ``[*Bp, p, D]`` emission matrix; R: ``[*Bp, p, p]`` emission covariance.
        m1: ``[*B, D]`` mean of ``x_1``; P1: ``[*Bp, D, D]`` covariance of ``x_1``.
        y: ``[T, *B, p]`` observations, time first (finite: put anything where missing).
        observed: optional ``[T, *Bo]`` boolean mask (``Bo`` broadcasts against ``B``); a
            missing step skips its measurement update and contributes nothing to the likelihood.

    Returns:
        A `FilterResult`.

    References:
        Kalman, *A New Approach to Linear Filtering and Prediction Problems* (J. Basic Eng., 1960).
        Särkkä, *Bayesian Filtering and Smoothing* (Cambridge University Press, 2013), chapter 4.
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012): missing steps.
    """
    eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
    if observed is not None:
        observed = align(observed, y.dim() - 1, 0)
    m, P = m1, P1
    out: list[list[Tensor]] = [[], [], [], [], [], [], []]
    for t in range(y.shape[0]):
        if t > 0:
            m = _mv(F, m)
            P = F @ P @ F.mT + Q
        # The measurement update of update(), inlined: the loop is overhead-bound, so the
        # whitening, log-determinants and the definiteness check run once, vectorized, below.
        HP = H @ P
        L, info = torch.linalg.cholesky_ex(HP @ H.mT + R)
        K = torch.cholesky_solve(HP, L).mT
        v = y[t] - _mv(H, m)
        IKH = eye - K @ H
        m_f, P_f = m + _mv(K, v), symmetrize(IKH @ P @ IKH.mT + K @ R @ K.mT)
        if observed is not None:  # no update where y_t is missing: the prediction stands
            m_f = torch.where(observed[t].unsqueeze(-1), m_f, m)
            P_f = torch.where(observed[t].unsqueeze(-1).unsqueeze(-1), P_f, P)
        for lst, val in zip(out, (m, P, m_f, P_f, L, v, info)):
            lst.append(val)
        m, P = m_f, P_f
    pm, pc, fm, fc, L, v, info = (torch.stack(torch.broadcast_tensors(*lst)) for lst in out)
    check_precision(H, R, pc, observed, "Kalman filter")
    if not bool((info == 0).all()):
        raise ValueError("Kalman filter: an innovation covariance H P H^T + R is not positive definite")
    L = align(L, v.dim() + 1, 2)
    w = _whiten(L, v)
    hld = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    rank = pm.dim()  # [T, *B, D]; covariances keep the parameters' batch, right-aligned
    observed, w, hld = mask_missing(observed, rank - 1, w, hld)
    return FilterResult(
        pm, align(symmetrize(pc), rank + 1, 2), fm, align(fc, rank + 1, 2), w, align(hld, rank - 1, 0), observed
    )


def smoother_gains(F: Tensor, filt_covs: Tensor, pred_covs: Tensor) -> Tensor:
    """``[T-1, *Bp, D, D]`` RTS gains ``G_t = P_{t|t} F^T P_{t+1|t}^{-1}``.

    Raises:
        ValueError: if a predicted covariance is singular (e.g. a singular ``Q``
            with a state the data pin down exactly), where the gain is undefined.
    """
    L, info = torch.linalg.cholesky_ex(pred_covs[1:])
    if not bool((info == 0).all()):
        raise ValueError("RTS smoother: a predicted covariance F P F^T + Q is singular; transition_cov must be PD")
    return torch.cholesky_solve(F @ filt_covs[:-1], L).mT


def rts_smoother(F: Tensor, res: FilterResult) -> tuple[Tensor, Tensor]:
    """Rauch–Tung–Striebel smoother.

    Args:
        F: ``[*Bp, D, D]`` transition matrix.
        res: the filter's output.

    Returns:
        Smoothed means ``[T, *B, D]`` and covariances ``[T, *Bp, D, D]``.

    References:
        Rauch, Tung & Striebel, *Maximum Likelihood Estimates of Linear Dynamic Systems*
        (AIAA J., 1965).
        Särkkä, *Bayesian Filtering and Smoothing* (Cambridge University Press, 2013), chapter 8.
    """
    T = res.filt_means.shape[0]
    if T == 1:
        return res.filt_means, res.filt_covs
    G = smoother_gains(F, res.filt_covs, res.pred_covs)
    m_s, P_s = [res.filt_means[-1]], [res.filt_covs[-1]]
    for t in range(T - 2, -1, -1):
        m_s.append(res.filt_means[t] + _mv(G[t], m_s[-1] - res.pred_means[t + 1]))
        P_s.append(symmetrize(res.filt_covs[t] + G[t] @ (P_s[-1] - res.pred_covs[t + 1]) @ G[t].mT))
    return torch.stack(m_s[::-1]), torch.stack(P_s[::-1])


def backward_conditionals(F: Tensor, res: FilterResult) -> tuple[Tensor, Tensor, Tensor]:
    """Backward kernels ``x_t | x_{t+1}, y_{1:t} ~ N(G_t x_{t+1} + c_t, C_t)``, ``t = 1..T-1``.

    Returns:
        ``G [T-1, *Bp, D, D]``, offsets ``c [T-1, *B, D]`` and covariances ``C [T-1, *Bp, D, D]``.
    """
    G = smoother_gains(F, res.filt_covs, res.pred_covs)
    c = res.filt_means[:-1] - _mv(G, res.pred_means[1:])
    C = symmetrize(res.filt_covs[:-1] - G @ res.pred_covs[1:] @ G.mT)
    return G, c, C


def backward_sample(F: Tensor, res: FilterResult, sample_shape: torch.Size) -> Tensor:
    """Forward filtering, backward sampling: exact draws of ``x_{1:T} | y_{1:T}``.

    Args:
        F: ``[*Bp, D, D]`` transition matrix.
        res: the filter's output.
        sample_shape: leading shape ``S`` of the draw.

    Returns:
        ``[*S, T, *B, D]`` posterior paths (time after the sample dimensions).
    """
    T = res.filt_means.shape[0]
    shape = torch.Size(sample_shape) + res.filt_means.shape[1:]
    like = res.filt_means

    def noise() -> Tensor:
        return torch.randn(shape, dtype=like.dtype, device=like.device)

    x = res.filt_means[-1] + _mv(psd_sqrt(res.filt_covs[-1]), noise())
    xs = [x]
    if T > 1:
        G, c, C = backward_conditionals(F, res)
        roots = psd_sqrt(C)
        for t in range(T - 2, -1, -1):
            x = _mv(G[t], x) + c[t] + _mv(roots[t], noise())
            xs.append(x)
    return torch.stack(xs[::-1], dim=len(shape) - res.filt_means[0].dim())
