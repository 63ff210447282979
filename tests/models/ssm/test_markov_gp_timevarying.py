"""The per-step Kalman filter and smoother (``timevarying.py``) against a dense unrolled Gaussian.

The oracle stacks ``x = Phi w`` with ``w = (x_1 - m_1, w_2, ..., w_T)`` and ``Phi[t, k] = A_t ... A_{k+1}``,
then conditions the joint Gaussian of ``(x, y)`` densely.  Both sides are exact in float64: tolerance 1e-9.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.models.ssm import LinearGaussianSSM
from vitorch.models.ssm.timevarying import tv_kalman_filter, tv_posterior_chain, tv_smoother

torch.set_default_dtype(torch.float64)


def _spd(n, g):
    a = torch.randn(n, n, generator=g)
    return a @ a.mT / n + 0.3 * torch.eye(n)


def _model(T, D, p, seed=0):
    g = torch.Generator().manual_seed(seed)
    A = torch.empty(0, D, D)
    if T > 1:
        A = torch.stack([0.9 * torch.linalg.qr(torch.randn(D, D, generator=g))[0] for _ in range(T - 1)])
    Q = torch.stack([_spd(D, g) for _ in range(T - 1)]) if T > 1 else torch.empty(0, D, D)
    H = torch.randn(T, p, D, generator=g)
    R = torch.stack([_spd(p, g) for _ in range(T)])
    return A, Q, H, R, torch.randn(D, generator=g), _spd(D, g), torch.randn(T, p, generator=g)


def _dense(A, Q, H, R, m1, P1, y, observed):
    T, D = y.shape[0], m1.shape[0]
    Phi = torch.zeros(T * D, T * D)
    for t in range(T):
        M = torch.eye(D)
        for k in range(t, -1, -1):
            Phi[t * D : (t + 1) * D, k * D : (k + 1) * D] = M
            if k > 0:
                M = M @ A[k - 1]
    mean_x = Phi[:, :D] @ m1
    cov_x = Phi @ torch.block_diag(P1, *Q.unbind(0)) @ Phi.mT
    Hb = torch.block_diag(*H)
    cov_y = Hb @ cov_x @ Hb.mT + torch.block_diag(*R)
    keep = observed.repeat_interleave(y.shape[1])
    yk, my, Cy, Cxy = y.reshape(-1)[keep], (Hb @ mean_x)[keep], cov_y[keep][:, keep], (cov_x @ Hb.mT)[:, keep]
    log_lik = MultivariateNormal(my, Cy).log_prob(yk) if keep.any() else torch.tensor(0.0)
    gain = torch.linalg.solve(Cy, Cxy.mT).mT
    mean = (mean_x + gain @ (yk - my)).reshape(T, D)
    cov = cov_x - gain @ Cxy.mT
    covs = torch.stack([cov[t * D : (t + 1) * D, t * D : (t + 1) * D] for t in range(T)])
    return log_lik, mean, covs


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("T,D,p", [(1, 1, 1), (2, 2, 1), (7, 3, 2), (16, 2, 3)])
@pytest.mark.parametrize("missing", [False, True])
def test_filter_and_smoother_against_dense(T, D, p, parallel, missing):
    A, Q, H, R, m1, P1, y = _model(T, D, p, seed=T * 10 + D)
    observed = torch.ones(T, dtype=torch.bool)
    if missing:
        observed[0] = False
        observed[T // 2 :: 3] = False
    ll, mean, covs = _dense(A, Q, H, R, m1, P1, y, observed)
    res = tv_kalman_filter(A, Q, H, R, m1, P1, y, observed if missing else None, parallel=parallel)
    assert abs(float(res.log_liks().sum() - ll)) < 1e-9
    m_s, P_s = tv_smoother(A, res, parallel)
    torch.testing.assert_close(m_s, mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(P_s, covs, rtol=0, atol=1e-9)
    q = tv_posterior_chain(A, res)
    torch.testing.assert_close(q.mean, mean, rtol=0, atol=1e-9)
    torch.testing.assert_close(q.marginal_covariances, covs, rtol=0, atol=1e-9)


def test_time_invariant_case_equals_linear_gaussian_ssm_batched():
    g = torch.Generator().manual_seed(5)
    D, p, T, B = 2, 2, 20, 3
    F = 0.8 * torch.eye(D) + 0.1 * torch.randn(D, D, generator=g)
    Q, R, P1 = _spd(D, g), _spd(p, g), _spd(D, g)
    H, m1 = torch.randn(p, D, generator=g), torch.randn(D, generator=g)
    y = torch.randn(B, T, p, generator=g)
    y[1, 4] = float("nan")
    lgs = LinearGaussianSSM(F, Q, H, R, m1, P1)
    observed = ~torch.isnan(y).any(-1)
    yt = torch.nan_to_num(y).movedim(1, 0)
    A, Qs = F.expand(T - 1, D, D), Q.expand(T - 1, D, D)
    res = tv_kalman_filter(A, Qs, H.expand(T, p, D), R.expand(T, p, p), m1, P1, yt, observed.T)
    torch.testing.assert_close(res.log_liks().sum(0), lgs.log_prob(y), rtol=0, atol=1e-9)
    m_s, P_s = tv_smoother(F.expand(T - 1, D, D), res)
    means, covs = lgs.smooth(y)
    torch.testing.assert_close(m_s.movedim(0, 1), means, rtol=0, atol=1e-9)
    torch.testing.assert_close(P_s.movedim(0, 1), covs, rtol=0, atol=1e-9)


def test_bad_input():
    A, Q, H, R, m1, P1, y = _model(5, 2, 1)
    with pytest.raises(ValueError, match="A must be"):
        tv_kalman_filter(A[:2], Q, H, R, m1, P1, y)
    with pytest.raises(ValueError, match="observed"):
        tv_kalman_filter(A, Q, H, R, m1, P1, y, torch.ones(5))
    with pytest.raises(ValueError, match="not positive definite"):
        tv_kalman_filter(A, Q, H, -R, m1, P1, y, parallel=False)
