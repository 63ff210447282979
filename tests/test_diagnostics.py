"""Tests of vitorch.diagnostics against hand computations, exact distributions and closed forms.

Stochastic assertions compare an estimate with its target within ``Z`` standard errors
estimated from the same draws (``Z`` from conftest: 1e-4 false failures per CI run).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence
from torch.utils.data import DataLoader, TensorDataset

import vitorch as vt
from vitorch import diagnostics as dg
from vitorch.families import DiagNormal, FullRankNormal

from conftest import Z

# ----------------------------------------------------------------------------- ESS


def test_ess_matches_hand_computation():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert dg.ess(w.log()).item() == pytest.approx(10.0**2 / 30.0, rel=1e-12)
    log_w = torch.randn(7, 3, 2)
    w = log_w.exp().numpy()
    expected = w.sum(0) ** 2 / (w**2).sum(0)
    got = dg.ess(log_w)
    assert got.shape == (3, 2)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12)


def test_ess_is_invariant_to_scaling_the_weights_even_far_from_one():
    log_w = 3 * torch.randn(50, 4)
    base = dg.ess(log_w)
    for c in (-1e4, -30.0, 30.0, 1e4):  # w -> e^c w; naive exp would under/overflow at 1e4
        torch.testing.assert_close(dg.ess(log_w + c), base, rtol=1e-10, atol=0)
    perm = torch.randperm(50)
    torch.testing.assert_close(dg.ess(log_w[perm]), base, rtol=1e-12, atol=0)


def test_ess_extremes_and_degenerate_rows():
    K = 64
    assert dg.ess(torch.full((K, 2), -3.0)).tolist() == pytest.approx([K, K], rel=1e-12)
    dominant = torch.full((K,), -math.inf)
    dominant[5] = 2.0
    assert dg.ess(dominant).item() == pytest.approx(1.0, rel=1e-12)
    # -800 below the top: the others' weights underflow to exactly 0 relative to it
    assert dg.ess(torch.cat([torch.tensor([0.0]), torch.full((K - 1,), -800.0)])).item() == 1.0
    mixed = torch.randn(K, 3)
    mixed[:, 1] = -math.inf
    out = dg.ess(mixed)
    assert out[1].item() == 0.0 and torch.isfinite(out).all()
    assert dg.ess(torch.tensor([[0.3, -math.inf]])).tolist() == [1.0, 0.0]  # K = 1
    r = dg.ess(5 * torch.randn(K, 100))
    assert bool(((r >= 1 - 1e-12) & (r <= K + 1e-9)).all())


def test_ess_half_precision_is_finite():
    log_w = (20 * torch.randn(200, 3)).half()
    out = dg.ess(log_w)
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.double(), dg.ess(log_w.double()), rtol=2e-3, atol=0)


@pytest.mark.parametrize("fn", [dg.ess, dg.psis_khat, dg.psis])
def test_log_w_bad_input_names_log_w(fn):
    bad = [
        torch.tensor(1.0),  # no particle dimension
        torch.empty(0, 3),  # K = 0
        torch.tensor([0.0, math.nan]),
        torch.tensor([0.0, math.inf]),
        torch.tensor([1, 2]),  # integer weights
        [0.0, 1.0],
    ]
    for log_w in bad:
        with pytest.raises(ValueError, match="log_w"):
            fn(log_w)


# ----------------------------------------------------------------------------- PSIS


def _gpd_log_draws(k: float, shape, sigma: float = 1.0) -> torch.Tensor:
    """Exact generalized Pareto(k, sigma) draws, returned as logs: ``sigma (U^-k - 1) / k``."""
    u = 1.0 - torch.rand(shape)  # (0, 1]; U = 1 gives x = 0, a zero weight (log_w = -inf)
    return math.log(sigma / k) + torch.log(torch.expm1(-k * torch.log(u)))


@pytest.mark.parametrize("k", [0.2, 0.5, 0.8, 1.2])
def test_psis_khat_recovers_the_shape_of_exact_generalized_pareto_weights(k):
    """Above any threshold a GPD's exceedances are again GPD with the same shape, so the
    tail fit sees exact GPD data.  The estimator is shrunk by Vehtari et al.'s prior to
    (M k + 5) / (M + 10); that is the target.  The tolerance is Z standard errors of the
    mean over R independent replicates (columns), the se estimated from their spread
    (sd ~ 0.07-0.13 at K = 1e4, so Z se ~ 0.05-0.09).  Zhang-Stephens' own bias at
    M = 300 is below 0.7 of this se (checked with R = 1000).  Power: neighbouring k in
    the grid differ by >= 0.3, several tolerances."""
    K, R = 10_000, 50
    M = math.ceil(min(K / 5, 3 * math.sqrt(K)))
    khat = dg.psis_khat(_gpd_log_draws(k, (K, R), sigma=2.5))
    assert khat.shape == (R,)
    target = (M * k + 5) / (M + 10)
    se = khat.std().item() / math.sqrt(R)
    assert abs(khat.mean().item() - target) <= Z * se, (khat.mean().item(), target, se)


@pytest.mark.parametrize("k", [-0.3, 0.4, 1.1])
def test_psis_tail_fit_agrees_with_scipy_maximum_likelihood(k):
    """Zhang & Stephens' estimator is as efficient as the MLE but, being a posterior mean
    over a grid, sits an O(1/M) offset from it.  Measured once over 100 replicates at
    M = 1500: mean difference 0.0048, 0.0016, -0.0002 for k = -0.3, 0.4, 1.1, replicate sd
    of the difference <= 0.0006.  We allow half the estimators' own sampling sd,
    (1 + k) / sqrt(M) / 2 = 0.009-0.027, which covers offset + Z sd_diff (0.0077 at
    k = -0.3) and still flags any error as large as a sampling error.  k-hat is un-shrunk
    from the prior first."""
    from scipy import stats

    K = 250_000
    M = math.ceil(min(K / 5, 3 * math.sqrt(K)))
    log_w = torch.from_numpy(stats.genpareto.rvs(k, scale=1.5, size=K, random_state=7)).log()
    khat = dg.psis_khat(log_w).item()
    raw = (khat * (M + 10) - 5) / M
    w = log_w.exp().sort().values
    exceed = (w[K - M :] - w[K - M - 1]).numpy()
    c, _, _ = stats.genpareto.fit(exceed, floc=0)
    assert abs(raw - c) <= 0.5 * (1 + k) / math.sqrt(M), (raw, c)


def test_psis_khat_classifies_gaussian_proposals():
    """p = N(0, 1) with q = N(0, s^2): for s = 2 the weights are bounded (k < 0); for
    s = 1/2 their tail is ~ t^(-1/(1 - s^2)), k = 3/4 asymptotically (reached slowly:
    ~0.68 at K = 1e4).  Each class must hold with Z standard errors to spare."""
    K, R = 10_000, 40
    means = {}
    for s in (0.5, 2.0):
        z = s * torch.randn(K, R)
        log_w = Normal(0.0, 1.0).log_prob(z) - Normal(0.0, s).log_prob(z)
        khat = dg.psis_khat(log_w)
        means[s] = (khat.mean().item(), khat.std().item() / math.sqrt(R))
    assert means[2.0][0] + Z * means[2.0][1] < dg.KHAT_GOOD
    assert means[0.5][0] - Z * means[0.5][1] > dg.KHAT_GOOD


def test_psis_is_invariant_to_scale_and_order_and_vectorizes():
    log_w = _gpd_log_draws(0.6, (400, 3, 2))
    smoothed, khat = dg.psis(log_w)
    assert smoothed.shape == log_w.shape and khat.shape == (3, 2)
    s2, k2 = dg.psis(log_w + 1e3)  # w -> e^1000 w
    torch.testing.assert_close(k2, khat, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s2, smoothed + 1e3, rtol=1e-12, atol=1e-9)
    perm = torch.randperm(400)
    s3, k3 = dg.psis(log_w[perm])
    torch.testing.assert_close(k3, khat, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(s3, smoothed[perm], rtol=1e-12, atol=1e-12)
    for i in range(3):  # one column at a time gives the batched answer
        s1, k1 = dg.psis(log_w[:, i, 1])
        torch.testing.assert_close(k1, khat[i, 1], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(s1, smoothed[:, i, 1], rtol=1e-12, atol=1e-12)


def test_psis_smoothing_keeps_order_touches_only_the_tail_and_never_exceeds_the_max():
    K = 900
    M = math.ceil(min(K / 5, 3 * math.sqrt(K)))
    log_w = _gpd_log_draws(0.9, (K, 6)) - 4.0
    smoothed, khat = dg.psis(log_w)
    assert torch.isfinite(khat).all()
    order = log_w.argsort(0)
    raw_sorted, new_sorted = log_w.gather(0, order), smoothed.gather(0, order)
    assert bool((new_sorted.diff(dim=0) >= 0).all())  # the weight order is kept
    torch.testing.assert_close(new_sorted[: K - M], raw_sorted[: K - M], rtol=0, atol=0)
    assert bool((smoothed.amax(0) <= log_w.amax(0)).all())
    # The tail is changed and pulled in: the smoothed tail is GPD quantiles, not the draws.
    assert bool((new_sorted[K - M :] != raw_sorted[K - M :]).any(0).all())
    assert bool((new_sorted[K - M :] >= raw_sorted[K - M - 1]).all())


def test_psis_tail_is_the_fitted_gpd_quantiles():
    """Smoothed tail weight j, minus the threshold weight u, is sigma * F^{-1}((j - 1/2) / M; k-hat)
    for one sigma per row: its ratio to scipy's unit-scale quantile must be constant along j
    (except where truncated at the largest raw weight)."""
    from scipy import stats

    K = 2000
    M = math.ceil(min(K / 5, 3 * math.sqrt(K)))
    log_w = _gpd_log_draws(0.7, (K, 4))
    log_w = log_w - log_w.amax(0)  # largest weight 1, so exp() below is exact enough
    smoothed, khat = dg.psis(log_w)
    raw_sorted, new_sorted = log_w.sort(0).values, smoothed.sort(0).values
    p = (np.arange(1, M + 1) - 0.5) / M
    for b in range(4):
        excess = new_sorted[K - M :, b].exp() - raw_sorted[K - M - 1, b].exp()
        ratio = excess.numpy() / stats.genpareto.ppf(p, khat[b].item())
        kept = new_sorted[K - M :, b].numpy() < 0  # not truncated at the largest raw weight
        assert kept.sum() > M // 2
        np.testing.assert_allclose(ratio[kept], ratio[kept][0], rtol=1e-9)


def test_psis_special_cases():
    small = torch.randn(20, 2)  # M = 4 < 5 tail draws: cannot be assessed
    s, k = dg.psis(small)
    assert torch.isinf(k).all() and bool((k > 0).all())
    torch.testing.assert_close(s, small, rtol=0, atol=0)
    log_w = torch.randn(200, 3)
    log_w[:, 0] = -math.inf  # every weight zero
    log_w[:, 1] = 1.5  # equal weights, q = p: bounded, nothing to smooth
    s, k = dg.psis(log_w)
    assert k[0].item() == math.inf and k[1].item() == -math.inf and math.isfinite(k[2].item())
    assert bool((s[:, 0] == -math.inf).all())
    torch.testing.assert_close(s[:, 1], log_w[:, 1], rtol=0, atol=0)
    # Some zero weights among finite ones still give a finite fit.
    log_w = torch.randn(500)
    log_w[:300] = -math.inf
    s, k = dg.psis(log_w)
    assert math.isfinite(k.item()) and bool((s[:300] == -math.inf).all())


@given(
    K=st.integers(1, 60),
    batch=st.lists(st.integers(0, 3), max_size=2),
    scale=st.floats(0.1, 50.0),
)
def test_weight_diagnostics_shapes(K, batch, scale):
    log_w = scale * torch.randn(K, *batch)
    smoothed, khat = dg.psis(log_w)
    assert smoothed.shape == log_w.shape and khat.shape == tuple(batch)
    assert dg.ess(log_w).shape == tuple(batch) and dg.psis_khat(log_w).shape == tuple(batch)
    if K <= 20:  # too few tail draws: reported, not smoothed
        assert bool(torch.isinf(khat).all()) and torch.equal(smoothed, log_w)
    else:
        assert bool(torch.isfinite(khat).all()) and bool(torch.isfinite(smoothed).all())


# ----------------------------------------------------------------------------- gradient SNR


def test_gradient_snr_matches_the_analytic_gradient_moments():
    """loss = sum_i (theta_i - x_i)^2 with x_i ~ N(0, s_i^2): g_i = 2 (theta_i - x_i) is
    N(2 theta_i, 4 s_i^2).  Standard errors from the same draws: mean, sqrt(var / n);
    Gaussian sample variance, var sqrt(2 / (n - 1)); SNR (delta method),
    sqrt((1 + snr^2 / 2) / n)."""
    theta = torch.tensor([0.5, -1.0, 2.0, 0.0], requires_grad=True)
    s = torch.tensor([1.0, 0.5, 2.0, 1.0])
    n = 1500
    res = dg.gradient_snr(lambda: (theta - s * torch.randn(4)).pow(2).sum(), [theta], n)
    mean, var, snr = res.mean[0], res.variance[0], res.snr[0]
    true_mean, true_var = 2 * theta.detach(), 4 * s**2
    true_snr = true_mean.abs() / true_var.sqrt()
    assert bool(((mean - true_mean).abs() <= Z * (var / n).sqrt()).all())
    assert bool(((var - true_var).abs() <= Z * var * math.sqrt(2 / (n - 1))).all())
    assert bool(((snr - true_snr).abs() <= Z * ((1 + snr**2 / 2) / n).sqrt()).all())
    torch.testing.assert_close(res.standard_error[0], (var / n).sqrt())
    assert res.mean_snr == pytest.approx(snr.mean().item(), rel=1e-12)
    assert res.total_variance == pytest.approx(var.sum().item(), rel=1e-12)
    assert theta.grad is None


def test_gradient_snr_equals_the_moments_of_the_stacked_gradients():
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    unused = torch.nn.Parameter(torch.ones(2))
    net.register_parameter("unused", unused)

    def loss_fn():
        return net(torch.randn(5, 3)).pow(2).mean()

    state = torch.get_rng_state()
    res = dg.gradient_snr(loss_fn, net, num_draws=30)
    torch.set_rng_state(state)
    params = [p for p in net.parameters()]
    draws = [torch.autograd.grad(loss_fn(), params, allow_unused=True) for _ in range(30)]
    assert res.names == tuple(n for n, _ in net.named_parameters())
    for i, p in enumerate(params):
        g = torch.stack([torch.zeros_like(p) if d[i] is None else d[i] for d in draws])
        torch.testing.assert_close(res.mean[i], g.mean(0), rtol=1e-10, atol=1e-14)
        torch.testing.assert_close(res.variance[i], g.var(0), rtol=1e-10, atol=1e-14)
        assert res.mean[i].shape == p.shape
    k = res.names.index("unused")
    assert res.snr[k].tolist() == [0.0, 0.0]  # never reached: zero signal, not NaN
    assert all(p.grad is None for p in net.parameters())


def test_gradient_snr_constant_gradient_has_infinite_snr():
    theta = torch.tensor([1.0, 2.0], requires_grad=True)
    res = dg.gradient_snr(lambda: (3 * theta).sum(), (theta,), 3)
    assert res.snr[0].tolist() == [math.inf, math.inf]


def test_gradient_snr_sees_stl_zero_variance_at_the_exact_posterior():
    """Roeder et al. (2017): with q equal to the posterior the STL gradient is exactly 0 on
    every draw, while the reparameterization gradient keeps its score-term noise."""
    x, theta = torch.tensor([0.3, -1.2]), torch.tensor([1.0, 0.5])

    def log_joint(z):
        return (-0.5 * (z - theta).pow(2) - 0.5 * (x - z).pow(2)).sum(-1)

    loc = ((x + theta) / 2).requires_grad_()
    log_scale = torch.full((2,), 0.5 * math.log(0.5), requires_grad=True)

    def loss_fn(estimator):
        return lambda: vt.loss(log_joint, DiagNormal(loc, log_scale.exp()), 4, vt.objectives.elbo, estimator).loss

    stl = dg.gradient_snr(loss_fn(vt.estimators.stl), [loc, log_scale], 40)
    rep = dg.gradient_snr(loss_fn(vt.estimators.reparam), [loc, log_scale], 40)
    assert stl.total_variance < 1e-25
    assert rep.total_variance > 1e-2


def test_gradient_snr_bad_input():
    theta = torch.zeros(2, requires_grad=True)

    def ok():
        return (theta - torch.randn(2)).pow(2).sum()

    for n in (1, 0, True, 2.0):
        with pytest.raises(ValueError, match="num_draws"):
            dg.gradient_snr(ok, [theta], n)
    with pytest.raises(ValueError, match="params"):
        dg.gradient_snr(ok, [], 3)
    with pytest.raises(ValueError, match=r"params\[1\]"):
        dg.gradient_snr(ok, [theta, torch.zeros(2)], 3)
    with pytest.raises(ValueError, match="scalar"):
        dg.gradient_snr(lambda: theta * 2, [theta], 3)
    with pytest.raises(ValueError, match="no graph"):
        dg.gradient_snr(lambda: torch.tensor(1.0), [theta], 3)
    scale = theta.exp()  # derived once, outside loss_fn: its graph is freed by the first draw
    with pytest.raises(ValueError, match="inside loss_fn"):
        dg.gradient_snr(lambda: (scale * torch.randn(2)).sum(), [theta], 3)
    with pytest.raises(ValueError, match=r"non-finite gradient for params\[0\] at draw 0"):
        dg.gradient_snr(lambda: theta.sqrt().sum(), [theta], 3)


# ----------------------------------------------------------------------------- posterior collapse


def test_kl_per_dim_sums_to_the_full_kl():
    loc_q, scale_q = torch.randn(5, 3), torch.rand(5, 3) + 0.2
    loc_p, scale_p = torch.randn(3), torch.rand(3) + 0.5
    per_dim = dg.kl_per_dim(DiagNormal(loc_q, scale_q), DiagNormal(loc_p, scale_p))
    assert per_dim.shape == (5, 3) and bool((per_dim >= 0).all())
    full = kl_divergence(DiagNormal(loc_q, scale_q), DiagNormal(loc_p, scale_p))
    torch.testing.assert_close(per_dim.sum(-1), full, rtol=1e-12, atol=1e-12)
    # torch's own elementwise Normal KL, an implementation we did not write
    torch.testing.assert_close(per_dim, kl_divergence(Normal(loc_q, scale_q), Normal(loc_p, scale_p)))
    ind = dg.kl_per_dim(Independent(Normal(loc_q, scale_q), 1), Normal(0.0, 1.0))
    torch.testing.assert_close(ind, kl_divergence(Normal(loc_q, scale_q), Normal(0.0, 1.0)))
    same = dg.kl_per_dim(DiagNormal(loc_q, scale_q), DiagNormal(loc_q, scale_q * (1 + 1e-9)))
    assert bool((same >= 0).all()) and bool((same < 1e-17).all())  # ~ (2e-9)^2 / 2, no cancellation


def test_kl_per_dim_gradcheck():
    args = (torch.randn(2, 3), torch.rand(2, 3) + 0.3, torch.randn(3), torch.rand(3) + 0.3)
    args = tuple(a.requires_grad_() for a in args)
    assert torch.autograd.gradcheck(lambda a, b, c, d: dg.kl_per_dim(DiagNormal(a, b), DiagNormal(c, d)), args)


def test_kl_per_dim_bad_input():
    q = DiagNormal(torch.zeros(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="q must be a diagonal Gaussian"):
        dg.kl_per_dim(MultivariateNormal(torch.zeros(3), torch.eye(3)), q)
    with pytest.raises(ValueError, match="p must be a diagonal Gaussian"):
        dg.kl_per_dim(q, FullRankNormal(torch.zeros(3), torch.eye(3)))
    with pytest.raises(ValueError, match="event shapes"):
        dg.kl_per_dim(q, DiagNormal(torch.zeros(4), torch.ones(4)))
    with pytest.raises(ValueError, match=r"do not broadcast: q \(2, 3\), p \(4, 3\)"):
        dg.kl_per_dim(q, DiagNormal(torch.zeros(4, 3), torch.ones(4, 3)))


def test_active_units_flags_a_constant_unit_and_passes_an_informative_one():
    N = 500
    means = torch.stack([torch.randn(N), torch.full((N,), 0.7), 0.05 * torch.randn(N), 0.2 * torch.randn(N)], 1)
    res = dg.active_units(means)
    np.testing.assert_allclose(res.activity.numpy(), np.var(means.numpy(), axis=0, ddof=1), rtol=1e-12, atol=1e-20)
    # activities ~ 1, 0, 0.0025, 0.04 against 0.01; sampling error of each is ~ 6 % relative
    assert res.active.tolist() == [True, False, False, True] and res.count == 2
    assert res.activity[1].item() == 0.0
    assert dg.active_units(means, threshold=0.0).count == 3


def test_collapse_diagnostics_flags_a_decoder_that_ignores_z():
    """Linear-Gaussian VAE z ~ N(0, I), x_d | z ~ N(a_d z_d, 1): the exact encoder is
    N(a x / (1 + a^2), 1 / (1 + a^2)).  The decoder ignores z_2 (a_2 = 0), so z_2's posterior
    is the prior for every x: inactive, KL exactly 0; z_1 (a_1 = 2) is informative."""
    a = torch.tensor([2.0, 0.0])
    N = 1000
    z = torch.randn(N, 2)
    x = a * z + torch.randn(N, 2)

    def encoder(xb):
        return DiagNormal(a * xb / (1 + a**2), (1 / (1 + a**2)).sqrt().expand_as(xb))

    rep = dg.collapse_diagnostics(encoder, x, batch_size=96)  # uneven last batch
    ref = dg.active_units(encoder(x).mean)
    torch.testing.assert_close(rep.units.activity, ref.activity, rtol=1e-12, atol=1e-15)
    assert rep.units.active.tolist() == [True, False] and rep.num_inputs == N
    exact_kl = dg.kl_per_dim(encoder(x), Normal(0.0, 1.0)).mean(0)
    torch.testing.assert_close(rep.kl, exact_kl, rtol=1e-12, atol=0)
    assert rep.kl[1].item() == 0.0 and rep.kl[0].item() > 0.5

    loader = DataLoader(TensorDataset(x, torch.zeros(N)), batch_size=128)
    via_loader = dg.collapse_diagnostics(encoder, loader, prior=Normal(torch.zeros(2), torch.ones(2)))
    torch.testing.assert_close(via_loader.units.activity, ref.activity, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(via_loader.kl, exact_kl, rtol=1e-12, atol=0)
    means_only = dg.collapse_diagnostics(lambda xb: encoder(xb).mean, x, batch_size=1000)
    assert means_only.kl is None and means_only.units.count == 1


def test_collapse_bad_input():
    for means in (torch.zeros(5), torch.zeros(1, 3), torch.zeros(2, 3, 1), np.zeros((4, 2))):
        with pytest.raises(ValueError, match="means"):
            dg.active_units(means)
    with pytest.raises(ValueError, match="finite"):
        dg.active_units(torch.tensor([[0.0], [math.nan]]))
    for t in (-0.1, math.nan, math.inf, True, "0.01"):
        with pytest.raises(ValueError, match="threshold"):
            dg.active_units(torch.randn(4, 2), threshold=t)
    x = torch.randn(10, 2)
    with pytest.raises(ValueError, match="batch_size"):
        dg.collapse_diagnostics(lambda xb: xb, x, batch_size=0)
    with pytest.raises(ValueError, match="prior"):
        dg.collapse_diagnostics(lambda xb: xb, x, prior=Normal(0.0, 1.0))
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        dg.collapse_diagnostics(lambda xb: xb.sum(-1), x)
    with pytest.raises(ValueError, match="changed its D between batches: 2 then 1"):
        dg.collapse_diagnostics(lambda xb: xb[:, : 1 + (xb.shape[0] == 4)], x, batch_size=4)
    with pytest.raises(ValueError, match="at least 2 inputs"):
        dg.collapse_diagnostics(lambda xb: xb, x[:1])
