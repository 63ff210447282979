"""Dense oracles for linear-Gaussian state-space models: the joint Gaussian of (x_{1:T}, y_{1:T}) unrolled.

Written independently of the Kalman code: x = m + Phi w with w = (x_1 - m_1, w_2, ..., w_T),
so Cov(x) = Phi blockdiag(P_1, Q, ..., Q) Phi^T, and y = (I_T kron H) x + v.
"""

from __future__ import annotations

import torch


def random_model(D: int, p: int, batch=(), scale: float = 1.0):
    """A stable random model: spectral radius < 1, well-conditioned PD covariances."""

    def spd(n):
        a = torch.randn(*batch, n, n)
        return scale * (a @ a.mT / n + 0.5 * torch.eye(n))

    F = torch.randn(*batch, D, D)
    F = 0.9 * F / torch.linalg.matrix_norm(F, ord=2).unsqueeze(-1).unsqueeze(-1)
    return F, spd(D), torch.randn(*batch, p, D), spd(p), torch.randn(*batch, D), spd(D)


def unrolled(F, Q, H, R, m1, P1, T):
    """Means and covariances of the stacked x [T*D] and y [T*p] (single, unbatched model)."""
    D = F.shape[-1]
    powers = [torch.eye(D)]
    for _ in range(T):
        powers.append(F @ powers[-1])
    Phi = torch.zeros(T * D, T * D)
    for t in range(T):
        for k in range(t + 1):
            Phi[t * D : (t + 1) * D, k * D : (k + 1) * D] = powers[t - k]
    cov_w = torch.block_diag(P1, *([Q] * (T - 1)))
    mean_x = torch.cat([powers[t] @ m1 for t in range(T)])
    cov_x = Phi @ cov_w @ Phi.mT
    Hb = torch.block_diag(*([H] * T))
    mean_y = Hb @ mean_x
    cov_y = Hb @ cov_x @ Hb.mT + torch.block_diag(*([R] * T))
    cov_xy = cov_x @ Hb.mT
    return mean_x, cov_x, mean_y, cov_y, cov_xy, Phi, Hb


def _observed(y, mean_y, cov_y, cov_xy):
    """Drop the NaN (missing) entries of the stacked y from every y-indexed quantity."""
    keep = ~torch.isnan(y.reshape(-1))
    return y.reshape(-1)[keep], mean_y[keep], cov_y[keep][:, keep], cov_xy[:, keep], keep


def dense_log_prob(F, Q, H, R, m1, P1, y):
    T = y.shape[-2]
    _, _, mean_y, cov_y, cov_xy, *_ = unrolled(F, Q, H, R, m1, P1, T)
    y, mean_y, cov_y, *_ = _observed(y, mean_y, cov_y, cov_xy)
    return torch.distributions.MultivariateNormal(mean_y, cov_y).log_prob(y)


def dense_posterior(F, Q, H, R, m1, P1, y):
    """Posterior means [T, D] and marginal covariances [T, D, D] of x_t | y_{1:T} (NaN rows missing)."""
    T, D = y.shape[-2], F.shape[-1]
    mean_x, cov_x, mean_y, cov_y, cov_xy, *_ = unrolled(F, Q, H, R, m1, P1, T)
    y, mean_y, cov_y, cov_xy, _ = _observed(y, mean_y, cov_y, cov_xy)
    gain = torch.linalg.solve(cov_y, cov_xy.mT).mT
    mean = mean_x + gain @ (y - mean_y)
    cov = cov_x - gain @ cov_xy.mT
    blocks = torch.stack([cov[t * D : (t + 1) * D, t * D : (t + 1) * D] for t in range(T)])
    return mean.reshape(T, D), blocks, mean, cov


def dense_diffuse_log_prob(F, Q, H, R, a, P1, basis, y):
    """Exact diffuse log-likelihood: integrate delta (flat, x_1 = a + basis delta + N(0, P1)) out of the
    dense Gaussian, in the Durbin-Koopman normalization lim [log p_kappa + (r/2) log kappa]."""
    T = y.shape[-2]
    _, _, mean_y, cov_y, cov_xy, Phi, Hb = unrolled(F, Q, H, R, a, P1, T)
    y, mean_y, cov_y, _, keep = _observed(y, mean_y, cov_y, cov_xy)
    D = F.shape[-1]
    X = (Hb @ Phi[:, :D] @ basis)[keep]  # d y / d delta
    resid = y - mean_y
    Ci_X = torch.linalg.solve(cov_y, X)
    S = X.mT @ Ci_X
    b = Ci_X.mT @ resid
    base = torch.distributions.MultivariateNormal(mean_y, cov_y).log_prob(y)
    return base + 0.5 * b @ torch.linalg.solve(S, b) - 0.5 * torch.logdet(S)
