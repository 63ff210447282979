"""Kalman filter, RTS smoother and FFBS against the dense unrolled Gaussian (TESTING.md family 16)."""

from __future__ import annotations

import math

import pytest
import torch
from _dense import dense_diffuse_log_prob, dense_log_prob, dense_posterior, random_model, unrolled

from vitorch.models import ssm

from conftest import Z

# Deterministic comparisons: both sides are exact, so the tolerance is float64 rounding
# through O(T) Cholesky solves of well-conditioned (cond < 1e3) matrices.
RTOL, ATOL = 1e-9, 1e-9

SIZES = [(1, 1, 1), (1, 1, 6), (3, 2, 7), (2, 4, 5), (4, 1, 9)]  # (D, p, T)


@pytest.mark.parametrize("D,p,T", SIZES)
@pytest.mark.parametrize("parallel", [False, True])
def test_log_prob_matches_dense(D, p, T, parallel):
    F, Q, H, R, m1, P1 = random_model(D, p)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(T)
    torch.testing.assert_close(
        m.log_prob(y, parallel=parallel), dense_log_prob(F, Q, H, R, m1, P1, y), rtol=RTOL, atol=ATOL
    )


@pytest.mark.parametrize("D,p,T", SIZES)
def test_smoother_matches_dense(D, p, T):
    F, Q, H, R, m1, P1 = random_model(D, p)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(T)
    means, covs = m.smooth(y)
    d_means, d_covs, *_ = dense_posterior(F, Q, H, R, m1, P1, y)
    assert means.shape == (T, D) and covs.shape == (T, D, D)
    torch.testing.assert_close(means, d_means, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(covs, d_covs, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("diffuse", [None, True])
def test_long_series_default_path_matches_dense(diffuse):
    # T >= 16 takes the associative-scan filter by default in log_prob, smooth and sample_posterior.
    F, Q, H, R, m1, P1 = random_model(2, 1)
    _, y = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(20)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=diffuse)
    if diffuse:
        expected = dense_diffuse_log_prob(F, Q, H, R, m1, P1, torch.eye(2), y)
        d_means, d_covs, *_ = dense_posterior(F, Q, H, R, m1, P1 + 1e8 * torch.eye(2), y)
        tol = 1e-5  # O(1/kappa) bias of the kappa = 1e8 stand-in for the diffuse limit
    else:
        expected = dense_log_prob(F, Q, H, R, m1, P1, y)
        d_means, d_covs, *_ = dense_posterior(F, Q, H, R, m1, P1, y)
        tol = ATOL
    torch.testing.assert_close(m.log_prob(y), expected, rtol=RTOL, atol=ATOL)
    means, covs = m.smooth(y)
    torch.testing.assert_close(means, d_means, rtol=0, atol=tol)
    torch.testing.assert_close(covs, d_covs, rtol=0, atol=tol)
    assert m.sample_posterior(y, (3,)).shape == (3, 20, 2)


@pytest.mark.parametrize("parallel", [False, True])
def test_filter_is_the_smoother_of_the_prefix(parallel):
    # p(x_t | y_{1:t}) is the last marginal of the dense posterior given y_{1:t}.
    F, Q, H, R, m1, P1 = random_model(3, 2)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(6)
    f_means, f_covs = m.filter(y, parallel=parallel)
    for t in range(1, 7):
        d_means, d_covs, *_ = dense_posterior(F, Q, H, R, m1, P1, y[:t])
        torch.testing.assert_close(f_means[t - 1], d_means[-1], rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(f_covs[t - 1], d_covs[-1], rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("T", [1, 2, 3, 8, 13, 64])
def test_parallel_filter_equals_sequential_batched(T):
    # Parameters batched over [3], data over [4, 3]: covariances broadcast, means do not.
    F, Q, H, R, m1, P1 = random_model(2, 3, batch=(3,))
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(T, (4,))
    seq = ssm.kalman_filter(F, Q, H, R, m1, P1, y.movedim(-2, 0))
    par = ssm.parallel_kalman_filter(F, Q, H, R, m1, P1, y.movedim(-2, 0))
    for a, b in zip(seq[:6], par[:6]):
        torch.testing.assert_close(*torch.broadcast_tensors(a, b), rtol=RTOL, atol=ATOL)
    assert seq.observed is None and par.observed is None
    for a, b in zip(ssm.rts_smoother(F, seq), ssm.parallel_rts_smoother(F, par)):
        torch.testing.assert_close(*torch.broadcast_tensors(a, b), rtol=RTOL, atol=ATOL)
    lp = m.log_prob(y)
    assert lp.shape == (4, 3)
    torch.testing.assert_close(
        lp[1, 2], dense_log_prob(F[2], Q[2], H[2], R[2], m1[2], P1[2], y[1, 2]), rtol=RTOL, atol=ATOL
    )


def test_batched_smoother_matches_dense_per_series():
    F, Q, H, R, m1, P1 = random_model(2, 1, batch=(3,))
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(5, (2,))
    means, covs = m.smooth(y)
    assert means.shape == (2, 3, 5, 2) and covs.shape == (2, 3, 5, 2, 2)
    d_means, d_covs, *_ = dense_posterior(F[1], Q[1], H[1], R[1], m1[1], P1[1], y[0, 1])
    torch.testing.assert_close(means[0, 1], d_means, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(covs[0, 1], d_covs, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("mask", [None, [True, False, True], [False, True, False]])
@pytest.mark.parametrize("parallel", [False, True])
def test_diffuse_log_prob_matches_dense_integral(mask, parallel):
    F, Q, H, R, m1, P1 = random_model(3, 2)
    _, y = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(6)
    diffuse = True if mask is None else torch.tensor(mask)
    basis = torch.eye(3) if mask is None else torch.eye(3)[:, torch.tensor(mask)]
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=diffuse)
    torch.testing.assert_close(
        m.log_prob(y, parallel=parallel), dense_diffuse_log_prob(F, Q, H, R, m1, P1, basis, y), rtol=RTOL, atol=ATOL
    )


def test_diffuse_is_the_large_prior_limit():
    # log p_kappa(y) + (r/2) log kappa -> diffuse log-likelihood, with error O(||S_y|| / kappa); and the
    # smoother's moments converge to the diffuse ones at the same rate.  kappa = 1e8 makes the bias ~1e-7.
    F, Q, H, R, m1, P1 = random_model(2, 2)
    _, y = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(5)
    kappa = 1e8
    big = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1 + kappa * torch.eye(2))
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=True)
    torch.testing.assert_close(m.log_prob(y), big.log_prob(y) + math.log(kappa), rtol=0, atol=1e-5)
    for a, b in zip(m.smooth(y), big.smooth(y)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_diffuse_matches_statsmodels_exact_diffuse():
    sm = pytest.importorskip("statsmodels.api")
    y = torch.tensor(sm.datasets.nile.load_pandas().data["volume"].to_numpy())[:, None]
    ref = sm.tsa.UnobservedComponents(y.numpy().ravel(), "local linear trend", use_exact_diffuse=True)
    sig_eps, sig_level, sig_trend = 15099.0, 1469.1, 30.0
    m = ssm.LinearGaussianSSM(
        torch.tensor([[1.0, 1.0], [0.0, 1.0]]),
        torch.diag(torch.tensor([sig_level, sig_trend])),
        torch.tensor([[1.0, 0.0]]),
        torch.tensor([[sig_eps]]),
        torch.zeros(2),
        diffuse=True,
    )
    expected = torch.tensor(ref.loglike([sig_eps, sig_level, sig_trend]))
    torch.testing.assert_close(m.log_prob(y), expected, rtol=1e-10, atol=0)
    torch.testing.assert_close(m.log_prob(y, parallel=True), expected, rtol=1e-10, atol=0)


def _with_gaps(y):
    """Series-specific missing rows: the first step, an interior step, the last step, none."""
    y = y.clone()
    y[0, 0] = y[1, 3] = y[2, -1] = float("nan")
    return y


@pytest.mark.parametrize("parallel", [False, True])
def test_missing_observations_match_dense(parallel):
    F, Q, H, R, m1, P1 = random_model(2, 2)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    y = _with_gaps(m.sample(6, (4,))[1])
    lp = m.log_prob(y, parallel=parallel)
    for b in range(4):
        torch.testing.assert_close(lp[b], dense_log_prob(F, Q, H, R, m1, P1, y[b]), rtol=RTOL, atol=ATOL)
    means, covs = m.smooth(y)
    for b in range(4):
        d_means, d_covs, *_ = dense_posterior(F, Q, H, R, m1, P1, y[b])
        torch.testing.assert_close(means[b], d_means, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(covs[b], d_covs, rtol=RTOL, atol=ATOL)
    # A series with nothing observed has log-likelihood 0 and the prior as its "posterior".
    empty = torch.full((3, 2), float("nan"))
    torch.testing.assert_close(m.log_prob(empty, parallel=parallel), torch.tensor(0.0))


@pytest.mark.parametrize("parallel", [False, True])
def test_missing_observations_with_diffuse_state(parallel):
    F, Q, H, R, m1, P1 = random_model(2, 2)
    y = _with_gaps(ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(6, (4,))[1])
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=True)
    lp = m.log_prob(y, parallel=parallel)
    for b in range(4):
        expected = dense_diffuse_log_prob(F, Q, H, R, m1, P1, torch.eye(2), y[b])
        torch.testing.assert_close(lp[b], expected, rtol=RTOL, atol=ATOL)
    draws = m.sample_posterior(y, (2,))
    assert draws.shape == (2, 4, 6, 2) and torch.isfinite(draws).all()


def test_missing_rows_must_be_whole():
    F, Q, H, R, m1, P1 = random_model(2, 2)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    y = torch.randn(5, 2)
    y[2, 0] = float("nan")
    with pytest.raises(ValueError, match="all-NaN rows"):
        m.log_prob(y)
    with pytest.raises(ValueError, match="finite"):
        m.log_joint(torch.zeros(5, 2), torch.full((5, 2), float("nan")))


def _moment_check(draws, mean, cov):
    """Sample mean and covariance of Gaussian draws [N, n] within Z standard errors of (mean, cov)."""
    N = draws.shape[0]
    sd = cov.diagonal().sqrt()
    # se of a sample mean: sd / sqrt(N)
    assert ((draws.mean(0) - mean).abs() <= Z * sd / math.sqrt(N)).all()
    # se of a Gaussian sample covariance entry: sqrt((S_ii S_jj + S_ij^2) / N)
    centered = draws - mean
    emp = centered.mT @ centered / N
    se = ((sd[:, None] * sd[None, :]).pow(2) + cov.pow(2)).div(N).sqrt()
    assert ((emp - cov).abs() <= Z * se).all()


def test_ffbs_matches_dense_joint_posterior():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(4)
    draws = m.sample_posterior(y, (4000,))
    assert draws.shape == (4000, 4, 2)
    _, _, mean, cov = dense_posterior(F, Q, H, R, m1, P1, y)
    _moment_check(draws.reshape(4000, -1), mean, cov)


def test_ffbs_diffuse_matches_smoother():
    F, Q, H, R, m1, P1 = random_model(2, 2)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=True)
    y = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(4)[1]
    draws = m.sample_posterior(y, (4000,))
    means, covs = m.smooth(y)
    for t in range(4):
        _moment_check(draws[:, t], means[t], covs[t])


def test_prior_sampler_matches_dense_moments():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    x, y = m.sample(3, (4000,))
    mean_x, cov_x, mean_y, cov_y, cov_xy, *_ = unrolled(F, Q, H, R, m1, P1, 3)
    joint = torch.cat([x.reshape(4000, -1), y.reshape(4000, -1)], -1)
    cov = torch.cat([torch.cat([cov_x, cov_xy], 1), torch.cat([cov_xy.mT, cov_y], 1)])
    _moment_check(joint, torch.cat([mean_x, mean_y]), cov)


def test_log_joint_matches_dense():
    F, Q, H, R, m1, P1 = random_model(2, 3)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    x, y = m.sample(5, (3,))
    mean_x, cov_x, *_ = unrolled(F, Q, H, R, m1, P1, 5)
    prior = torch.distributions.MultivariateNormal(mean_x, cov_x).log_prob(x.reshape(3, -1))
    lik = torch.distributions.MultivariateNormal(x @ H.mT, R).log_prob(y).sum(-1)
    torch.testing.assert_close(m.log_joint(x, y), prior + lik, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("parallel", [False, True])
def test_log_prob_gradcheck(parallel):
    F, Q, H, R, m1, P1 = random_model(2, 1)
    y = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1).sample(4)[1]
    a_Q, a_R = torch.linalg.cholesky(Q), torch.linalg.cholesky(R)

    def fn(F, a_Q, H, a_R, m1):
        return ssm.LinearGaussianSSM(F, a_Q @ a_Q.mT, H, a_R @ a_R.mT, m1, P1, validate_args=False).log_prob(
            y, parallel
        )

    args = tuple(t.clone().requires_grad_() for t in (F, a_Q, H, a_R, m1))
    assert torch.autograd.gradcheck(fn, args)


def test_long_float32_series_stays_finite():
    torch.set_default_dtype(torch.float32)
    F = torch.tensor([[0.99, 0.1], [0.0, 0.95]])
    m = ssm.LinearGaussianSSM(
        F, 0.1 * torch.eye(2), torch.tensor([[1.0, 0.0]]), torch.eye(1), torch.zeros(2), torch.eye(2)
    )
    # 4,000 steps: the filter reaches its steady state within a few hundred (eigenvalues 0.99
    # and 0.95), so rounding has thousands of steps to accumulate; the sequential pass is the cost.
    _, y = m.sample(4_000)
    par = m.log_prob(y, parallel=True)
    res = ssm.kalman_filter(*m._params, m.init_mean, m.init_cov, y.movedim(-2, 0))  # one sequential pass
    seq = res.log_liks().sum()
    means, covs = ssm.rts_smoother(m.transition_matrix, res)
    p_means, p_covs = m.smooth(y)  # the parallel filter and smoother
    assert torch.isfinite(p_means).all() and (torch.linalg.eigvalsh(p_covs) > 0).all()
    assert torch.isfinite(par) and torch.isfinite(seq)
    assert torch.isfinite(means).all() and torch.isfinite(covs).all()
    assert (torch.linalg.eigvalsh(covs) > 0).all()
    exact = ssm.LinearGaussianSSM(
        *(t.double() for t in (F, m.transition_cov, m.emission_matrix, m.emission_cov, m.init_mean, m.init_cov))
    ).log_prob(y.double(), parallel=True)
    # float32 accumulates ~T * eps * |log-lik per step| of rounding: 4e3 * 6e-8 * few ~ 1e-3 relative at worst.
    assert abs(par.double() - exact) / abs(exact) < 1e-3 and abs(seq.double() - exact) / abs(exact) < 1e-3


def test_bad_input_raises():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    with pytest.raises(ValueError, match="emission_cov"):
        ssm.LinearGaussianSSM(F, Q, H, -R, m1, P1)
    with pytest.raises(ValueError, match="transition_cov"):
        ssm.LinearGaussianSSM(F, -Q, H, R, m1, P1)
    with pytest.raises(ValueError, match="emission_matrix"):
        ssm.LinearGaussianSSM(F, Q, torch.randn(1, 3), R, m1, P1)
    with pytest.raises(ValueError, match="init_cov"):
        ssm.LinearGaussianSSM(F, Q, H, R, m1)
    with pytest.raises(ValueError, match="transition_matrix"):
        ssm.LinearGaussianSSM(F * float("nan"), Q, H, R, m1, P1)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    with pytest.raises(ValueError, match="y must be"):
        m.log_prob(torch.randn(5, 2))
    with pytest.raises(ValueError, match="finite"):
        m.log_prob(torch.full((5, 1), float("inf")))
    with pytest.raises(ValueError, match="dtype"):
        m.log_prob(torch.zeros(5, 1, dtype=torch.float32))
    with pytest.raises(ValueError, match="diffuse"):
        ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=True).log_prob(torch.randn(1, 1))  # 1 obs, 2 diffuse states
    with pytest.raises(ValueError, match="diffuse"):
        ssm.LinearGaussianSSM(F, Q, H, R, m1, P1, diffuse=torch.tensor([1, 0]))
    # validate_args=False skips the checks
    ssm.LinearGaussianSSM(F, Q, H, -R, m1, P1, validate_args=False)
