"""L-BFGS that keeps its whole path, and the compact inverse-Hessian factors Pathfinder reads.

`lbfgs_path` minimizes a potential ``V`` and returns every accepted iterate with its
value and gradient (what Pathfinder builds its normal approximations on).  Its line
search brackets a step satisfying the strong Wolfe conditions and refines it by
quadratic interpolation through ``(V(lo), V'(lo), V(hi))``, which lands on the exact line
minimum of a quadratic.

`update_diagonal` and `inverse_hessian_factors` are Pathfinder's Algorithms 3-4: a
diagonal initial inverse Hessian updated along the path (Gilbert & Lemaréchal's diagonal
BFGS with Oren-Luenberger scaling), and the compact form of L-BFGS's inverse Hessian
(Byrd, Nocedal & Schnabel, 1994) from the last ``J`` pairs,
``H = diag(alpha) + beta gamma beta^T``.

References:
    Nocedal & Wright, *Numerical Optimization* (2nd ed., 2006), Algorithms 3.5 and 7.4.
    Byrd, Nocedal & Schnabel, *Representations of quasi-Newton matrices and their use in
    limited memory methods* (Math. Prog. 1994), Theorem 2.2.
    Gilbert & Lemaréchal, *Some numerical experiments with variable-storage quasi-Newton
    algorithms* (Math. Prog. 1989).
    Zhang, Carpenter, Gelman & Vehtari, *Pathfinder* (JMLR 2022), Algorithms 3-4.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = ["LBFGSPath", "lbfgs_path", "update_diagonal", "inverse_hessian_factors"]


class LBFGSPath(NamedTuple):
    """The accepted iterates of `lbfgs_path`: ``x [L + 1, D]``, ``value [L + 1]``, ``grad [L + 1, D]``
    (of the potential ``V``) and ``num_evals``, the number of ``V`` and gradient evaluations."""

    x: Tensor
    value: Tensor
    grad: Tensor
    num_evals: int


def _direction(grad: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """``-H grad`` for L-BFGS's ``H`` from pairs ``s, y [D, m]``, ``H_0 = (s^T y / y^T y) I`` from the
    newest pair, through the compact form (the same ``H`` as the two-loop recursion, in a few
    matrix products instead of ``4 m`` vector operations)."""
    gamma0 = torch.dot(s[:, -1], y[:, -1]) / torch.dot(y[:, -1], y[:, -1])
    beta, gamma = inverse_hessian_factors(gamma0.expand(grad.shape[0]), s, y)
    return -(gamma0 * grad + beta @ (gamma @ (beta.mT @ grad)))


def _line_search(fn, x, f0, g0, d, t, c1, c2, max_evals):
    """A step ``t`` along ``d`` meeting the strong Wolfe conditions, or ``None``; returns
    ``(t, f, g, evals)``.  Non-finite values count as too long a step."""
    d0 = torch.dot(g0, d).item()
    lo, f_lo, d_lo, hi, f_hi = 0.0, f0.item(), d0, math.inf, math.nan
    for evals in range(1, max_evals + 1):
        f, g = fn(x + t * d)
        ft = f.item()
        dt = torch.dot(g, d).item() if math.isfinite(ft) else math.nan
        if not math.isfinite(ft) or ft > f0.item() + c1 * t * d0 or ft >= f_lo:
            hi, f_hi = t, ft
        elif abs(dt) <= -c2 * d0:
            return t, f, g, evals
        elif dt > 0:
            hi, f_hi = t, ft
        else:
            lo, f_lo, d_lo = t, ft, dt
        if hi == math.inf:
            t = 2 * t
            continue
        w = hi - lo
        curvature = f_hi - f_lo - d_lo * w
        # Minimum of the quadratic through f(lo), f'(lo), f(hi), kept inside the bracket.
        t = lo - d_lo * w * w / (2 * curvature) if math.isfinite(f_hi) and curvature > 0 else lo + 0.5 * w
        t = min(max(t, lo + 0.01 * w), hi - 0.01 * w)
        if w < 1e-16 * max(1.0, hi):
            break
    return None


def lbfgs_path(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    x0: Tensor,
    max_iters: int = 1000,
    history: int = 6,
    rel_tol: float = 1e-13,
    grad_tol: float = 1e-8,
    c1: float = 1e-4,
    c2: float = 0.9,
    max_line_search: int = 50,
) -> LBFGSPath:
    """Minimize ``V`` by L-BFGS and keep every accepted iterate.

    Stops after ``max_iters`` iterations, when the relative decrease
    ``|V_k - V_{k+1}| / max(|V_k|, |V_{k+1}|, 1)`` falls below ``rel_tol`` (Pathfinder's
    ``tau_rel``), when ``max|grad V| < grad_tol``, or when the line search fails.

    Args:
        fn: ``x [D] -> (V(x) [], grad V(x) [D])``.
        x0: ``[D]`` start, where ``V`` is finite.
        max_iters: iteration cap ``L``.
        history: pairs the search direction uses (its inverse Hessian, in compact form).
        rel_tol, grad_tol: stopping tolerances.
        c1, c2: Wolfe constants (``0 < c1 < c2 < 1``); a small ``c2`` makes the line
            search nearly exact.
        max_line_search: evaluations per line search.

    Returns:
        `LBFGSPath`.
    """
    f, g = fn(x0)
    if not bool(torch.isfinite(f)) or not bool(torch.isfinite(g).all()):
        raise ValueError(f"pathfinder: the log density or its gradient is not finite at the start {x0.tolist()}")
    xs, fs, gs, evals = [x0], [f], [g], 1
    s, y = x0.new_zeros(x0.shape[0], 0), x0.new_zeros(x0.shape[0], 0)
    x = x0
    for _ in range(max_iters):
        if g.abs().max().item() < grad_tol:
            break
        d = _direction(g, s, y) if s.shape[1] else -g
        t = 1.0 if s.shape[1] else 1.0 / max(g.norm().item(), 1e-300)
        found = _line_search(fn, x, f, g, d, t, c1, c2, max_line_search)
        if found is None:
            break
        t, f_new, g_new, n = found
        evals += n
        x_new = x + t * d
        si, yi = x_new - x, g_new - g
        if torch.dot(si, yi).item() > 0:  # strong Wolfe guarantees it up to rounding
            s, y = torch.cat([s, si[:, None]], 1)[:, -history:], torch.cat([y, yi[:, None]], 1)[:, -history:]
        done = abs(f.item() - f_new.item()) / max(abs(f.item()), abs(f_new.item()), 1.0) < rel_tol
        x, f, g = x_new, f_new, g_new
        xs.append(x)
        fs.append(f)
        gs.append(g)
        if done:
            break
    return LBFGSPath(torch.stack(xs), torch.stack(fs), torch.stack(gs), evals)


def update_diagonal(alpha: Tensor, s: Tensor, y: Tensor) -> Tensor:
    """Pathfinder's diagonal inverse-Hessian update (its Algorithm 3) for one pair ``(s, y)``.

    It is the diagonal of the BFGS update of the Hessian guess ``B = diag(1 / alpha)``
    after Oren-Luenberger scaling ``B <- (a / b) B``, with ``a = y^T diag(alpha) y``,
    ``b = y^T s``, ``c = s^T diag(alpha)^{-1} s``:
    ``1 / alpha_new = a / (b alpha) + y^2 / b - a s^2 / (b c alpha^2)``.

    Args:
        alpha: ``[D]`` current diagonal (positive).
        s, y: ``[D]`` the step and the change of ``grad V``, with ``y^T s > 0``.

    Returns:
        ``[D]`` the new diagonal.
    """
    a = (y * alpha * y).sum()
    b = (y * s).sum()
    c = (s * s / alpha).sum()
    inverse = a / (b * alpha) + y * y / b - a * s * s / (b * c * alpha * alpha)
    # The update keeps the diagonal positive in exact arithmetic; guard against rounding.
    return torch.where(inverse > 0, 1.0 / inverse, alpha)


def inverse_hessian_factors(alpha: Tensor, s: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """The compact L-BFGS inverse Hessian ``H = diag(alpha) + beta gamma beta^T``.

    With the pairs oldest first as the columns of ``S, Y [D, J]``, ``R`` the upper
    triangle of ``S^T Y`` and ``E`` its diagonal,
    ``beta = [diag(alpha) Y, S]`` and
    ``gamma = [[0, -R^{-1}], [-R^{-T}, R^{-T} (E + Y^T diag(alpha) Y) R^{-1}]]``.

    Args:
        alpha: ``[*batch, D]`` initial diagonal ``H_0``.
        s, y: ``[*batch, D, J]`` steps and gradient changes.

    Returns:
        ``beta [*batch, D, 2J]`` and ``gamma [*batch, 2J, 2J]`` (symmetric, indefinite).

    References:
        Byrd, Nocedal & Schnabel (1994), Theorem 2.2; Zhang et al. (2022), Algorithm 4.
    """
    j = s.shape[-1]
    sy = s.mT @ y
    r = torch.triu(sy)
    eye = torch.eye(j, dtype=s.dtype, device=s.device)
    r_inv = torch.linalg.solve_triangular(r, eye.expand_as(r), upper=True)
    ay = alpha.unsqueeze(-1) * y
    inner = torch.diag_embed(sy.diagonal(dim1=-2, dim2=-1)) + y.mT @ ay
    zero = torch.zeros_like(r)
    gamma = torch.cat(
        [torch.cat([zero, -r_inv], -1), torch.cat([-r_inv.mT, r_inv.mT @ inner @ r_inv], -1)],
        -2,
    )
    return torch.cat([ay, s], -1), gamma
