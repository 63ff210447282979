"""Kalman filtering and smoothing with a different transition and emission at every step.

Model, time first::

    x_1 ~ N(m_1, P_1),   x_t = A_t x_{t-1} + w_t,  w_t ~ N(0, Q_t)   (t = 2..T),
    y_t = H_t x_t + v_t,  v_t ~ N(0, R_t).

Two users need per-step matrices that `kalman_filter` (time-invariant) does not take:
a GP on irregular times (``A_t = expm(F dt_t)``) and the structured VAE, whose
encoder emits a different Gaussian potential (``R_t``) at every frame.  The parallel
filter builds the scan elements of Särkkä & García-Fernández (2021) per step and runs
them through the same associative operator and scan as `parallel_kalman_filter`; the
smoothers of `kalman.py` / `parallel.py` already accept per-step transitions
(``A [T-1, *B, D, D]``) because they only ever multiply by ``A`` elementwise in time.

Every input is broadcast to one batch shape ``[*B]`` (covariances carry it too: here
they may depend on the data, through ``R_t``).

References:
    Särkkä & García-Fernández, Temporal Parallelization of Bayesian Smoothers (IEEE TAC 2021).
    Särkkä, Bayesian Filtering and Smoothing (CUP 2013), ch. 4 and 8.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._scan import associative_scan
from .chain import GaussianMarkovChain
from .kalman import FilterResult, _mv, _whiten, align, backward_conditionals, rts_smoother, symmetrize
from .parallel import _combine, parallel_rts_smoother

__all__ = ["tv_kalman_filter", "tv_smoother", "tv_posterior_chain"]


def _broadcast(A, Q, H, R, m1, P1, y, observed):
    T, D, p = y.shape[0], m1.shape[-1], y.shape[-1]
    shapes = [A.shape[1:-2], Q.shape[1:-2], H.shape[1:-2], R.shape[1:-2], m1.shape[:-1], P1.shape[:-2], y.shape[1:-1]]
    if observed is not None:
        shapes.append(observed.shape[1:])
    B = torch.broadcast_shapes(*shapes)
    n = len(B)
    A, Q = align(A, n + 3, 2).expand(T - 1, *B, D, D), align(Q, n + 3, 2).expand(T - 1, *B, D, D)
    H, R = align(H, n + 3, 2).expand(T, *B, p, D), align(R, n + 3, 2).expand(T, *B, p, p)
    m1, P1, y = m1.expand(*B, D), P1.expand(*B, D, D), align(y, n + 2, 1).expand(T, *B, p)
    if observed is not None:
        observed = align(observed, n + 1, 0).expand(T, *B)
    return A, Q, H, R, m1, P1, y, observed


def _check(A, Q, H, R, m1, P1, y, observed) -> None:
    T = y.shape[0]
    if y.dim() < 2 or m1.dim() < 1:
        raise ValueError(
            f"tv_kalman_filter: y must be [T, *B, p] and m1 [*B, D]; got {tuple(y.shape)}, {tuple(m1.shape)}"
        )
    for name, t, n in (("A", A, T - 1), ("Q", Q, T - 1), ("H", H, T), ("R", R, T)):
        if t.dim() < 3 or t.shape[0] != n:
            raise ValueError(f"tv_kalman_filter: {name} must be [{n}, *B, ., .] (time first); got {tuple(t.shape)}")
    if observed is not None and (observed.dtype != torch.bool or observed.shape[0] != T):
        raise ValueError(f"tv_kalman_filter: observed must be a boolean [T, *B] mask; got {observed.dtype}")


def _factor(S: Tensor) -> tuple[Tensor, Tensor, Callable[[Tensor], Tensor]]:
    """Cholesky factor ``L`` of ``S [..., p, p]``, a success mask, and ``B -> S^{-1} B``.

    Scalar observations (a GP, ``p = 1``) skip the batched LAPACK calls, whose per-matrix
    overhead dominates for ``1 x 1`` systems.
    """
    if S.shape[-1] == 1:
        return S.clamp_min(0).sqrt(), S[..., 0, 0] > 0, lambda B: B / S
    L, info = torch.linalg.cholesky_ex(S)
    return L, info == 0, lambda B: torch.cholesky_solve(B, L)


def _finish(A, Q, H, R, m1, P1, y, observed, filt_means, filt_covs) -> FilterResult:
    """One-step predictions, whitened innovations and ``log|L_t|`` from the filtered laws, every step at once."""
    pred_means = torch.cat([m1.unsqueeze(0), _mv(A, filt_means[:-1])])
    pred_covs = torch.cat([P1.unsqueeze(0), symmetrize(A @ filt_covs[:-1] @ A.mT + Q)])
    L, ok, _ = _factor(symmetrize(H @ pred_covs @ H.mT + R))
    if observed is not None:
        ok = ok | ~observed
    if not bool(ok.all()):
        raise ValueError("tv_kalman_filter: an innovation covariance H P H^T + R is not positive definite")
    v = y - _mv(H, pred_means)
    w = v / L[..., 0] if L.shape[-1] == 1 else _whiten(L, v)
    hld = L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    if observed is not None:
        w, hld = torch.where(observed.unsqueeze(-1), w, 0.0), torch.where(observed, hld, 0.0)
    return FilterResult(pred_means, pred_covs, filt_means, filt_covs, w, hld, observed)


def _sequential(A, Q, H, R, m1, P1, y, observed) -> tuple[Tensor, Tensor]:
    eye = torch.eye(m1.shape[-1], dtype=m1.dtype, device=m1.device)
    m, P = m1, P1
    means, covs = [], []
    for t in range(y.shape[0]):
        if t > 0:
            m, P = _mv(A[t - 1], m), symmetrize(A[t - 1] @ P @ A[t - 1].mT + Q[t - 1])
        HP = H[t] @ P
        L, _ = torch.linalg.cholesky_ex(symmetrize(HP @ H[t].mT + R[t]))
        K = torch.cholesky_solve(HP, L).mT
        IKH = eye - K @ H[t]
        m_f = m + _mv(K, y[t] - _mv(H[t], m))
        P_f = symmetrize(IKH @ P @ IKH.mT + K @ R[t] @ K.mT)  # Joseph form
        if observed is not None:
            m_f = torch.where(observed[t].unsqueeze(-1), m_f, m)
            P_f = torch.where(observed[t][..., None, None], P_f, P)
        m, P = m_f, P_f
        means.append(m)
        covs.append(P)
    return torch.stack(means), torch.stack(covs)


def _elements(A, Q, H, R, m1, P1, y, observed) -> tuple[Tensor, ...]:
    """Per-step scan elements ``(A, b, C, eta, J)``, time first (Särkkä & García-Fernández, 2021, Lemma 7)."""
    eye = torch.eye(m1.shape[-1], dtype=m1.dtype, device=m1.device)
    # Step 1 conditions the known prior on y_1 (no dependence on a previous state); steps >= 2
    # condition x_k | x_{k-1} ~ N(A_k x_{k-1}, Q_k) on y_k.
    Ak = torch.cat([torch.zeros_like(A[:1]), A])
    Ck = torch.cat([P1.unsqueeze(0), Q])
    mk = torch.cat([m1.unsqueeze(0), m1.new_zeros(y.shape[0] - 1, *m1.shape)])
    HC = H @ Ck
    _, _, solve = _factor(symmetrize(HC @ H.mT + R))
    K = solve(HC).mT
    IKH = eye - K @ H
    v = y - _mv(H, mk)
    b = mk + _mv(K, v)
    C = symmetrize(IKH @ Ck @ IKH.mT + K @ R @ K.mT)
    HA = H @ Ak
    Sinv_HA = solve(HA)
    J = symmetrize(HA.mT @ Sinv_HA)
    eta = _mv(Sinv_HA.mT, v)
    Ael = IKH @ Ak
    if observed is not None:  # a missing y_k leaves the plain transition (or the prior at k = 1)
        o1, o2 = observed.unsqueeze(-1), observed[..., None, None]
        Ael, b, C = torch.where(o2, Ael, Ak), torch.where(o1, b, mk), torch.where(o2, C, Ck)
        eta, J = torch.where(o1, eta, 0.0), torch.where(o2, J, 0.0)
    return Ael, b, C, eta, J


def tv_kalman_filter(
    A: Tensor,
    Q: Tensor,
    H: Tensor,
    R: Tensor,
    m1: Tensor,
    P1: Tensor,
    y: Tensor,
    observed: Tensor | None = None,
    parallel: bool = True,
) -> FilterResult:
    """Kalman filter with per-step matrices: sequential (``O(T)`` steps) or by associative scan.

    Args:
        A: ``[T-1, *B, D, D]`` transitions into steps ``2..T``; Q: ``[T-1, *B, D, D]`` their noise.
        H: ``[T, *B, p, D]``; R: ``[T, *B, p, p]`` (positive definite where observed).
        m1: ``[*B, D]``; P1: ``[*B, D, D]``.
        y: ``[T, *B, p]`` (finite; anything where missing).
        observed: optional ``[T, *B]`` boolean mask; a missing step has no update and no likelihood term.
        parallel: the associative scan (``O(log T)`` depth) or the sequential loop; equal up to rounding.

    Returns:
        A `FilterResult` whose fields all carry the broadcast batch ``[*B]``; ``log_liks()``
        gives ``log p(y_t | y_{1:t-1})``.

    References:
        Särkkä & García-Fernández, *Temporal Parallelization of Bayesian Smoothers*
        (IEEE Trans. Autom. Control, 2021).
    """
    _check(A, Q, H, R, m1, P1, y, observed)
    args = _broadcast(A, Q, H, R, m1, P1, y, observed)
    if parallel and y.shape[0] > 1:
        try:
            _, means, covs, _, _ = associative_scan(_combine, _elements(*args))
        except torch.linalg.LinAlgError:  # the scan's solves can fail where the loop's updates do not
            means, covs = _sequential(*args)
    else:
        means, covs = _sequential(*args)
    return _finish(*args, means, covs)


def tv_smoother(A: Tensor, res: FilterResult, parallel: bool = True) -> tuple[Tensor, Tensor]:
    """RTS smoothing with per-step transitions ``A [T-1, *B, D, D]``: means ``[T, *B, D]``, covs ``[T, *B, D, D]``.

    References:
        Rauch, Tung & Striebel, *Maximum Likelihood Estimates of Linear Dynamic Systems* (AIAA J., 1965);
        Särkkä & García-Fernández (2021), Lemmas 9-10, for the parallel form.
    """
    if res.filt_means.shape[0] == 1:
        return res.filt_means, res.filt_covs
    A = align(A, res.filt_covs.dim(), 2).expand(res.filt_covs.shape[0] - 1, *res.filt_covs.shape[1:])
    return (parallel_rts_smoother if parallel else rts_smoother)(A, res)


def tv_posterior_chain(A: Tensor, res: FilterResult) -> GaussianMarkovChain:
    """The smoothing posterior ``p(x_{1:T} | y)`` as a reverse-time `GaussianMarkovChain`.

    Batch ``[*B]``, event ``[T, D]``.

    Its ``rsample`` is a reparameterized draw by associative scan, differentiable in every input.

    References:
        Frühwirth-Schnatter, *Data Augmentation and Dynamic Linear Models* (J. Time Ser. Anal., 1994):
        the backward kernels; Särkkä & García-Fernández (2021) for the scan.
    """
    T, D = res.filt_means.shape[0], res.filt_means.shape[-1]
    last_loc, last_tril = res.filt_means[-1], torch.linalg.cholesky(res.filt_covs[-1])
    if T == 1:
        mats, vecs = last_tril.new_zeros(0, D, D), last_loc.new_zeros(0, D)
        return GaussianMarkovChain(last_loc, last_tril, mats, vecs, mats, reverse=True, validate_args=False)
    A = align(A, res.filt_covs.dim(), 2).expand(T - 1, *res.filt_covs.shape[1:])
    G, c, C = backward_conditionals(A, res)
    G, c = G.flip(0).movedim(0, -3), c.flip(0).movedim(0, -2)
    tril = torch.linalg.cholesky(C).flip(0).movedim(0, -3)
    return GaussianMarkovChain(last_loc, last_tril, G, c, tril, reverse=True, validate_args=False)
