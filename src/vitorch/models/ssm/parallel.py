"""The temporally parallel Kalman filter of Särkkä & García-Fernández (2021).

Filtering is a prefix scan: each time step ``k`` becomes an element
``(A, b, C, eta, J)`` describing ``p(x_k | x_{k-1}, y_k)`` (the affine Gaussian
``N(A x_{k-1} + b, C)``) together with the likelihood ``p(y_k | x_{k-1})`` in
information form (``eta``, ``J``).  Combining two elements marginalizes the state
between them, and the operator is associative, so `associative_scan`
yields every filtering distribution ``p(x_k | y_{1:k}) = N(b_{1:k}, C_{1:k})`` in
``O(log T)`` rounds of batched ``D x D`` algebra.  The log-likelihood then
follows from the one-step predictions, all computed at once.

References:
    Särkkä & García-Fernández, Temporal Parallelization of Bayesian Smoothers,
    IEEE Transactions on Automatic Control 66(1), 2021 (Lemmas 7-8).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._scan import associative_scan
from .kalman import (
    FilterResult,
    _mv,
    _whiten,
    align,
    backward_conditionals,
    check_precision,
    kalman_filter,
    mask_missing,
    precision_error,
    symmetrize,
    update,
)

__all__ = ["parallel_kalman_filter", "parallel_rts_smoother"]


def _combine(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    A_i, b_i, C_i, eta_i, J_i = earlier
    A_j, b_j, C_j, eta_j, J_j = later
    eye = torch.eye(A_i.shape[-1], dtype=A_i.dtype, device=A_i.device)
    M = eye + C_i @ J_j  # (I + J_j C_i) is its transpose, as C and J are symmetric
    Aj_Minv = torch.linalg.solve(M.mT, A_j.mT).mT  # A_j M^{-1}
    Minv_Ai = torch.linalg.solve(M, A_i)  # M^{-1} A_i, so A_i^T (I + J_j C_i)^{-1} = Minv_Ai^T
    A = Aj_Minv @ A_i
    b = _mv(Aj_Minv, b_i + _mv(C_i, eta_j)) + b_j
    C = symmetrize(Aj_Minv @ C_i @ A_j.mT + C_j)
    eta = _mv(Minv_Ai.mT, eta_j - _mv(J_j, b_i)) + eta_i
    J = symmetrize(Minv_Ai.mT @ J_j @ A_i + J_i)
    return A, b, C, eta, J


def _elements(F, Q, H, R, m1, P1, y, observed):
    """The scan's elements, time first: ``A, C, J [T, *Bp, D, D]`` and ``b, eta [T, *B, D]``."""
    T = y.shape[0]
    # k = 1: the prior is known, so the element is the filtered x_1 with no dependence on x_0.
    b1, C1, _, _ = update(m1, P1, y[0], H, R)
    # k >= 2: condition x_k | x_{k-1} ~ N(F x_{k-1}, Q) on y_k.
    S = symmetrize(H @ Q @ H.mT + R)
    L, info = torch.linalg.cholesky_ex(S)
    if not bool((info == 0).all()):
        raise ValueError("parallel Kalman filter: H Q H^T + R is not positive definite")
    HQ = H @ Q
    K = torch.cholesky_solve(HQ, L).mT  # Q H^T S^{-1}
    eye = torch.eye(F.shape[-1], dtype=F.dtype, device=F.device)
    IKH = eye - K @ H
    A = IKH @ F
    C = symmetrize(IKH @ Q @ IKH.mT + K @ R @ K.mT)  # Joseph form of (I - K H) Q
    HF = H @ F
    Sinv_HF = torch.cholesky_solve(HF, L)
    J = symmetrize(HF.mT @ Sinv_HF)
    y_rest = y[1:]
    b = _mv(K, y_rest)
    eta = _mv(Sinv_HF.mT, y_rest)
    batch_p = torch.broadcast_shapes(A.shape[:-2], C1.shape[:-2])
    mat_shape = (T, *batch_p, *A.shape[-2:])
    A_all = torch.cat([torch.zeros_like(A).expand(1, *mat_shape[1:]), A.expand(T - 1, *mat_shape[1:])])
    C_all = torch.cat([C1.expand(1, *mat_shape[1:]), C.expand(T - 1, *mat_shape[1:])])
    J_all = torch.cat([torch.zeros_like(J).expand(1, *mat_shape[1:]), J.expand(T - 1, *mat_shape[1:])])
    vec_shape = torch.broadcast_shapes(b1.shape, b.shape[1:], eta.shape[1:])
    b_all = torch.cat([b1.expand(1, *vec_shape), b.expand(T - 1, *vec_shape)])
    eta_all = torch.cat([torch.zeros(1, *vec_shape, dtype=b.dtype, device=b.device), eta.expand(T - 1, *vec_shape)])
    rank = b_all.dim() + 1  # matrices keep the parameters' batch, right-aligned against the data's
    A_all, C_all, J_all = align(A_all, rank, 2), align(C_all, rank, 2), align(J_all, rank, 2)
    if observed is not None:
        # A missing y_k leaves the plain transition: (A, b, C) = (F, 0, Q), or the prior itself at k = 1.
        o = align(observed, rank - 2, 0)
        o1, o2 = o.unsqueeze(-1), o.unsqueeze(-1).unsqueeze(-1)
        first = torch.zeros(T, dtype=torch.bool, device=o.device)
        first[0] = True
        first = align(first, rank - 2, 0)
        A_all = torch.where(o2, A_all, torch.where(first.unsqueeze(-1).unsqueeze(-1), A_all, F))
        b_all = torch.where(o1, b_all, torch.where(first.unsqueeze(-1), m1, 0.0))
        C_all = torch.where(o2, C_all, torch.where(first.unsqueeze(-1).unsqueeze(-1), P1, Q))
        eta_all = torch.where(o1, eta_all, 0.0)
        J_all = torch.where(o2, J_all, 0.0)
    return A_all, b_all, C_all, eta_all, J_all


def parallel_kalman_filter(
    F: Tensor, Q: Tensor, H: Tensor, R: Tensor, m1: Tensor, P1: Tensor, y: Tensor, observed: Tensor | None = None
) -> FilterResult:
    """Kalman filter by associative scan: ``O(log T)`` depth, ``O(T)`` work.

    Same arguments and result as `vitorch.models.ssm.kalman.kalman_filter`
    (time first, ``y [T, *B, p]``), up to rounding.

    References:
        Särkkä & García-Fernández, *Temporal Parallelization of Bayesian Smoothers*
        (IEEE Trans. Autom. Control, 2021).
    """
    T = y.shape[0]
    if T == 1 and observed is None:
        check_precision(H, R, P1[None], None, "parallel Kalman filter")
        m_f, P_f, w, hld = update(m1, P1, y[0], H, R)
        r = m_f.dim() + 1
        return FilterResult(
            m1.expand_as(m_f)[None],
            align(P1[None], r + 1, 2),
            m_f[None],
            align(P_f[None], r + 1, 2),
            w[None],
            align(hld[None], r - 1, 0),
        )
    # The scan is less robust to rounding than the sequential filter (its combination steps solve
    # with I + C J, singular once a covariance has outgrown float precision).  When it fails, or its
    # innovation covariances cannot be trusted, the sequential filter reruns the series: it either
    # succeeds or raises a ValueError that names the step and the cause.
    try:
        _, filt_means, filt_covs, _, _ = associative_scan(_combine, _elements(F, Q, H, R, m1, P1, y, observed))
    except torch.linalg.LinAlgError:
        return kalman_filter(F, Q, H, R, m1, P1, y, observed)
    # One-step predictions from the filtered laws, every step at once.
    pred_means = torch.cat([m1.expand(1, *filt_means.shape[1:]), _mv(F, filt_means[:-1])])
    pred_covs = torch.cat([P1.expand(1, *filt_covs.shape[1:]), symmetrize(F @ filt_covs[:-1] @ F.mT + Q)])
    S = symmetrize(H @ pred_covs @ H.mT + R)
    L, info = torch.linalg.cholesky_ex(S)
    if not bool((info == 0).all()) or precision_error(H, R, pred_covs, observed, "") is not None:
        return kalman_filter(F, Q, H, R, m1, P1, y, observed)
    v = y - _mv(H, pred_means)
    w = _whiten(L, v)
    hld = align(L.diagonal(dim1=-2, dim2=-1).log().sum(-1), w.dim() - 1, 0)
    observed, w, hld = mask_missing(observed, w.dim() - 1, w, hld)
    return FilterResult(pred_means, pred_covs, filt_means, filt_covs, w, hld, observed)


def _combine_smoother(earlier: tuple[Tensor, ...], later: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    # Elements run backwards in time: "earlier" is nearer T.  Composing x = E x' + g + N(0, L).
    E_i, g_i, L_i = earlier
    E_j, g_j, L_j = later
    return E_j @ E_i, _mv(E_j, g_i) + g_j, symmetrize(E_j @ L_i @ E_j.mT + L_j)


def parallel_rts_smoother(F: Tensor, res: FilterResult) -> tuple[Tensor, Tensor]:
    """RTS smoother by associative scan (Särkkä & García-Fernández, 2021, Lemmas 9-10).

    The backward kernels ``x_t | x_{t+1}, y_{1:t} ~ N(G_t x_{t+1} + c_t, C_t)`` are affine
    Gaussian maps; composing them from ``p(x_T | y_{1:T})`` backwards gives every smoothed
    marginal, in ``O(log T)`` rounds.  Same result as `vitorch.models.ssm.kalman.rts_smoother`.

    Returns:
        Smoothed means ``[T, *B, D]`` and covariances ``[T, *Bp, D, D]``.
    """
    if res.filt_means.shape[0] == 1:
        return res.filt_means, res.filt_covs
    G, c, C = backward_conditionals(F, res)
    last_m, last_P = res.filt_means[-1:], res.filt_covs[-1:]
    E = torch.cat([torch.zeros_like(G[:1]).expand(1, *G.shape[1:]), G.flip(0)])
    g = torch.cat([last_m.expand(1, *c.shape[1:]), c.flip(0)])
    L_shape = torch.broadcast_shapes(last_P.shape[1:], C.shape[1:])
    L = torch.cat([last_P.expand(1, *L_shape), C.flip(0).expand(C.shape[0], *L_shape)])
    _, means, covs = associative_scan(_combine_smoother, (E, g, L))
    return means.flip(0), covs.flip(0)
