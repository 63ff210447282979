"""Pathfinder: normal approximations along an L-BFGS path, and multi-path importance resampling.

Single-path Pathfinder (Zhang et al., Algorithm 1) runs L-BFGS on ``V = -log p`` and, at
every iterate ``theta_l`` of the path, forms the normal approximation
``N(theta_l - H_l grad V(theta_l), H_l)`` with ``H_l = diag(alpha_l) + beta_l gamma_l beta_l^T``
the inverse-Hessian estimate of the last ``J`` curvature pairs (`inverse_hessian_factors`).
It estimates each approximation's ELBO with ``K`` draws, keeps the best one and returns
draws from it.  Multi-path Pathfinder (Algorithm 2) pools the draws of several paths and
resamples them by Pareto-smoothed importance weights ``p / q``, whose k-hat says how far
the pooled approximation is from ``p``.

Draws use the paper's Algorithm 5: with ``beta~ = diag(alpha)^{-1/2} beta = Q R`` (thin
QR) and ``C`` the Cholesky factor of ``I + R gamma R^T`` (``2J x 2J``),
``x = mu + diag(alpha)^{1/2} (u + Q (C - I) Q^T u)``, ``u ~ N(0, I_D)``, so a draw and its
``log q`` cost ``O(D J)`` after an ``O(D J^2)`` set-up, and ``log q`` is read from ``u``.

References:
    Zhang, Carpenter, Gelman & Vehtari, *Pathfinder: Parallel quasi-Newton variational
    inference* (JMLR 2022), Algorithms 1-5.
    Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling* (2024).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..diagnostics import psis
from ..families import FullRankNormal
from .lbfgs import inverse_hessian_factors, lbfgs_path, update_diagonal

__all__ = ["PathfinderResult", "MultiPathfinderResult", "pathfinder", "multipath_pathfinder"]

_LOG_2PI = math.log(2 * math.pi)
_CURVATURE_EPS = 2.2e-16  # a pair enters the history only if y^T s > eps y^T y (Zhang et al., Algorithm 3)


class PathfinderResult(NamedTuple):
    """What `pathfinder` returns.

    Attributes:
        q: the selected normal approximation as a ``FullRankNormal`` (event ``[D]``).
        draws: ``[M, D]`` draws from ``q``.
        log_p: ``[M]`` ``log_prob`` at the draws.
        log_q: ``[M]`` ``log q`` at the draws.
        elbo: ``[L]`` ELBO estimate of the approximation at iterates ``1..L``.
        best: index into ``path`` of the selected iterate (``1..L``).
        path: ``[L + 1, D]`` the L-BFGS iterates, the start first.
        khat: ``[]`` PSIS k-hat of the weights ``log_p - log_q`` (``inf`` when
            ``M <= 20``, too few draws to assess).
        num_evals: log-density and gradient evaluations along the path, plus the
            log-density evaluations of the ELBO and final draws.

    References:
        Zhang, Carpenter, Gelman & Vehtari (JMLR 2022), Algorithm 1.
    """

    q: FullRankNormal
    draws: Tensor
    log_p: Tensor
    log_q: Tensor
    elbo: Tensor
    best: int
    path: Tensor
    khat: Tensor
    num_evals: int


class MultiPathfinderResult(NamedTuple):
    """What `multipath_pathfinder` returns.

    Attributes:
        draws: ``[R, D]`` draws resampled from the pooled draws of all paths.
        log_w: ``[I * M]`` raw log importance weights ``log_p - log_q`` of the pooled draws.
        smoothed_log_w: ``[I * M]`` their Pareto-smoothed version (the resampling weights).
        khat: ``[]`` PSIS k-hat of the pooled weights.
        index: ``[R]`` which pooled draw each resampled draw is.
        paths: the single-path `PathfinderResult` of every path.

    References:
        Zhang, Carpenter, Gelman & Vehtari (JMLR 2022), Algorithm 2; Vehtari et al. (2024).
    """

    draws: Tensor
    log_w: Tensor
    smoothed_log_w: Tensor
    khat: Tensor
    index: Tensor
    paths: list[PathfinderResult]


class _Approximation(NamedTuple):
    """Normal approximations ``N(loc, H)``, ``H = A^{1/2} (I + Q (C C^T - I) Q^T) A^{1/2}``, with
    ``A = diag(alpha)``; every field may carry leading batch dimensions (one per iterate)."""

    loc: Tensor  # [*b, D]
    alpha: Tensor  # [*b, D]
    q_mat: Tensor  # [*b, D, k] orthonormal columns (k = 0 without history)
    chol: Tensor  # [*b, k, k]
    log_det: Tensor  # [*b] log det H

    def sample(self, n: int, generator) -> tuple[Tensor, Tensor]:
        """``n`` draws ``[*b, n, D]`` and their ``log q`` ``[*b, n]`` (Algorithm 5)."""
        d = self.loc.shape[-1]
        shape = (*self.loc.shape[:-1], n, d)
        u = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device, generator=generator)
        qu = u @ self.q_mat
        eye = torch.eye(qu.shape[-1], dtype=u.dtype, device=u.device)
        x = self.loc.unsqueeze(-2) + self.alpha.sqrt().unsqueeze(-2) * (u + (qu @ (self.chol - eye).mT) @ self.q_mat.mT)
        log_q = -0.5 * (u.pow(2).sum(-1) + self.log_det.unsqueeze(-1) + d * _LOG_2PI)
        return x, log_q

    def covariance(self) -> Tensor:
        eye = torch.eye(self.chol.shape[-1], dtype=self.chol.dtype, device=self.chol.device)
        inner = self.q_mat @ (self.chol @ self.chol.mT - eye) @ self.q_mat.mT
        root = self.alpha.sqrt()
        cov = torch.diag_embed(self.alpha) + root.unsqueeze(-1) * inner * root.unsqueeze(-2)
        return 0.5 * (cov + cov.mT)

    def select(self, i: int) -> _Approximation:
        return _Approximation(*(t[i] for t in self))


def _approximations(theta: Tensor, grad: Tensor, alpha: Tensor, s: Tensor, y: Tensor) -> tuple[_Approximation, Tensor]:
    """The normal approximations at ``theta [*b, D]`` (Algorithm 4 and the set-up of Algorithm 5)
    from histories ``s, y [*b, D, j]``; returns them and a ``[*b]`` mask of the valid ones."""
    if s.shape[-1] == 0:
        q_mat = theta.new_zeros(*theta.shape, 0)
        valid = torch.ones(theta.shape[:-1], dtype=torch.bool, device=theta.device)
        return _Approximation(theta - alpha * grad, alpha, q_mat, q_mat[..., :0, :], alpha.log().sum(-1)), valid
    beta, gamma = inverse_hessian_factors(alpha, s, y)
    correction = (beta @ (gamma @ (beta.mT @ grad.unsqueeze(-1)))).squeeze(-1)
    loc = theta - (alpha * grad + correction)
    q_mat, r = torch.linalg.qr(beta / alpha.sqrt().unsqueeze(-1))
    inner = r @ gamma @ r.mT
    eye = torch.eye(inner.shape[-1], dtype=theta.dtype, device=theta.device)
    chol, info = torch.linalg.cholesky_ex(eye + 0.5 * (inner + inner.mT))
    valid = info == 0  # rounding can lose positive definiteness: such iterates are skipped
    chol = torch.where(valid[..., None, None], chol, eye)
    log_det = alpha.log().sum(-1) + 2 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return _Approximation(loc, alpha, q_mat, chol, log_det), valid


def _approximation(theta: Tensor, grad: Tensor, alpha: Tensor, s: Tensor, y: Tensor) -> _Approximation | None:
    """One normal approximation at ``theta [D]``, or ``None`` if rounding broke it."""
    approx, valid = _approximations(theta, grad, alpha, s, y)
    return approx if bool(valid) else None


def _check_int(value, name: str, who: str, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{who}: {name} must be an integer >= {low}; got {value!r}")
    return value


def _log_prob_fn(log_prob: Callable[[Tensor], Tensor]):
    def fn(x: Tensor) -> tuple[Tensor, Tensor]:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            value = -log_prob(x.unsqueeze(0)).reshape(())
            (grad,) = torch.autograd.grad(value, x)
        return value.detach(), grad

    return fn


def _batched_log_prob(log_prob, x: Tensor) -> Tensor:
    with torch.no_grad():
        out = log_prob(x)
    if not isinstance(out, Tensor) or out.shape != x.shape[:-1]:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(f"pathfinder: log_prob must map [n, D] = {tuple(x.shape)} to [n]; got {got}")
    return out.nan_to_num(nan=-math.inf)


def pathfinder(
    log_prob: Callable[[Tensor], Tensor],
    init: Tensor,
    *,
    num_draws: int = 1000,
    num_elbo_draws: int = 5,
    history: int = 6,
    max_iters: int = 1000,
    rel_tol: float = 1e-13,
    line_search_c2: float = 0.9,
    generator: torch.Generator | None = None,
) -> PathfinderResult:
    """Single-path Pathfinder (Zhang et al., Algorithm 1).

    Args:
        log_prob: ``[n, D] -> [n]`` unnormalized log density, differentiable by autograd
            (e.g. ``model.log_density``).
        init: ``[D]`` starting point (the paper draws it uniformly in ``[-2, 2]^D`` on the
            unconstrained scale).
        num_draws: ``M``, draws returned from the selected approximation.
        num_elbo_draws: ``K``, draws per iterate for its ELBO estimate.
        history: ``J``, curvature pairs in each inverse-Hessian estimate.
        max_iters: ``L``, the L-BFGS iteration cap.
        rel_tol: ``tau_rel``, L-BFGS stops when the relative decrease of ``-log p`` falls below it.
        line_search_c2: the strong Wolfe curvature constant; values near 0 make the line
            search exact (on a Gaussian target the L-BFGS pairs are then conjugate and,
            once ``history >= D`` pairs have been made, the approximation is the target).
        generator: optional ``torch.Generator`` for all draws.

    Returns:
        `PathfinderResult`.

    Raises:
        TypeError: if ``log_prob`` is not callable or ``init`` not a floating tensor.
        ValueError: for a bad size or tolerance, or a non-finite density at ``init``.

    References:
        Zhang, Carpenter, Gelman & Vehtari, *Pathfinder* (JMLR 2022), Algorithms 1, 3-5.
    """
    if not callable(log_prob):
        raise TypeError(f"pathfinder: log_prob must be callable [n, D] -> [n]; got {type(log_prob).__name__}")
    if not isinstance(init, Tensor) or not init.is_floating_point():
        raise TypeError(f"pathfinder: init must be a floating-point tensor [D]; got {init!r}")
    if init.dim() != 1 or init.shape[0] < 1:
        raise ValueError(f"pathfinder: init must have shape [D]; got {tuple(init.shape)}")
    for name, value in (("num_draws", num_draws), ("num_elbo_draws", num_elbo_draws), ("history", history)):
        _check_int(value, name, "pathfinder")
    _check_int(max_iters, "max_iters", "pathfinder")
    if not (rel_tol >= 0 and math.isfinite(rel_tol)):
        raise ValueError(f"pathfinder: rel_tol must be finite and >= 0; got {rel_tol}")
    if not 1e-4 < line_search_c2 < 1:
        raise ValueError(f"pathfinder: line_search_c2 must lie in (1e-4, 1), above the Armijo c1; got {line_search_c2}")

    path = lbfgs_path(_log_prob_fn(log_prob), init.detach(), max_iters, history, rel_tol, c2=line_search_c2)
    n_iter = path.x.shape[0] - 1
    if n_iter == 0:
        raise ValueError("pathfinder: L-BFGS made no step from init (is the gradient zero there, or is init a mode?)")
    d = init.shape[0]
    # The histories of Algorithm 3 along the path; iterates whose histories hold the same number
    # of pairs are then approximated, and their ELBO draws made, together.
    alpha = torch.ones(d, dtype=init.dtype, device=init.device)
    s_hist = init.new_zeros(d, 0)
    y_hist = init.new_zeros(d, 0)
    groups: dict[int, list[tuple[int, Tensor, Tensor, Tensor]]] = {}
    for ell in range(1, n_iter + 1):
        s, y = path.x[ell] - path.x[ell - 1], path.grad[ell] - path.grad[ell - 1]
        if torch.dot(s, y) > _CURVATURE_EPS * torch.dot(y, y):
            alpha = update_diagonal(alpha, s, y)
            s_hist = torch.cat([s_hist, s[:, None]], 1)[:, -history:]
            y_hist = torch.cat([y_hist, y[:, None]], 1)[:, -history:]
        groups.setdefault(s_hist.shape[1], []).append((ell - 1, alpha, s_hist, y_hist))
    draws = init.new_empty(n_iter, num_elbo_draws, d)
    log_qs = init.new_empty(n_iter, num_elbo_draws)
    where: dict[int, tuple[_Approximation, int]] = {}
    for members in groups.values():
        index = torch.tensor([m[0] for m in members], device=init.device)
        approx, valid = _approximations(
            path.x[index + 1], path.grad[index + 1], *(torch.stack([m[k] for m in members]) for k in (1, 2, 3))
        )
        x, lq = approx.sample(num_elbo_draws, generator)
        draws[index] = torch.where(valid[:, None, None], x, approx.loc.unsqueeze(-2))
        log_qs[index] = torch.where(valid[:, None], lq, math.inf)  # an invalid iterate gets ELBO -inf
        for i, m in enumerate(members):
            where[m[0]] = (approx, i)
    # One batched call evaluates the ELBO draws of every iterate.
    log_p = _batched_log_prob(log_prob, draws.reshape(-1, d)).reshape(n_iter, num_elbo_draws)
    elbo = (log_p - log_qs).mean(-1).nan_to_num(nan=-math.inf)
    best = int(elbo.argmax())
    if not bool(torch.isfinite(elbo[best])):
        raise ValueError("pathfinder: no iterate of the path gave a finite ELBO estimate")
    group, i = where[best]
    chosen = group.select(i)
    x, log_q = chosen.sample(num_draws, generator)
    log_p_draws = _batched_log_prob(log_prob, x)
    q = FullRankNormal(chosen.loc, torch.linalg.cholesky(chosen.covariance()), validate_args=False)
    khat = psis(log_p_draws - log_q)[1]
    evals = path.num_evals + n_iter * num_elbo_draws + num_draws
    return PathfinderResult(q, x, log_p_draws, log_q, elbo, best + 1, path.x, khat, evals)


def multipath_pathfinder(
    log_prob: Callable[[Tensor], Tensor],
    inits: Tensor,
    *,
    num_draws: int = 1000,
    draws_per_path: int = 1000,
    generator: torch.Generator | None = None,
    **kwargs,
) -> MultiPathfinderResult:
    """Multi-path Pathfinder with Pareto-smoothed importance resampling (Zhang et al., Algorithm 2).

    Runs `pathfinder` from each row of ``inits``, pools the ``I * M`` draws with log
    weights ``log p - log q_i`` (each draw weighed against the approximation that drew it,
    as in the paper), smooths the weights by PSIS and resamples ``R`` draws with
    replacement in proportion to the smoothed weights.

    Args:
        log_prob: ``[n, D] -> [n]`` unnormalized log density.
        inits: ``[I, D]`` starting points, one path each.
        num_draws: ``R``, resampled draws returned.
        draws_per_path: ``M``, draws from each path's selected approximation.
        generator: optional ``torch.Generator``.
        **kwargs: passed to `pathfinder` (``num_elbo_draws``, ``history``, ``max_iters``, ...).

    Returns:
        `MultiPathfinderResult`.

    References:
        Zhang et al. (JMLR 2022), Algorithm 2; Vehtari et al., *Pareto Smoothed Importance
        Sampling* (2024).
    """
    if not isinstance(inits, Tensor) or not inits.is_floating_point() or inits.dim() != 2 or inits.shape[0] < 1:
        got = tuple(inits.shape) if isinstance(inits, Tensor) else type(inits).__name__
        raise ValueError(f"multipath_pathfinder: inits must be a floating tensor [I, D] with I >= 1; got {got}")
    _check_int(num_draws, "num_draws", "multipath_pathfinder")
    paths = [pathfinder(log_prob, init, num_draws=draws_per_path, generator=generator, **kwargs) for init in inits]
    log_w = torch.cat([p.log_p - p.log_q for p in paths])
    smoothed, khat = psis(log_w)
    probs = torch.softmax(smoothed, 0)
    if not bool(torch.isfinite(probs).all()):
        raise ValueError("multipath_pathfinder: every pooled draw has zero weight (log_prob is -inf at all of them)")
    index = torch.multinomial(probs, num_draws, replacement=True, generator=generator)
    draws = torch.cat([p.draws for p in paths])[index]
    return MultiPathfinderResult(draws, log_w, smoothed, khat, index, paths)
