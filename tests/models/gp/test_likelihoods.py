"""Likelihoods and integrators: closed forms against quadrature, quadrature against Monte Carlo,
log densities against scipy, support checks."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

import vitorch as vt
from vitorch.models import gp

from conftest import Z

MEAN = torch.tensor([-1.5, -0.2, 0.0, 0.7, 2.0], dtype=torch.float64)
VAR = torch.tensor([0.05, 0.3, 1.0, 0.6, 1.5], dtype=torch.float64)


def test_gauss_hermite_reproduces_gaussian_closed_forms():
    lik = gp.GaussianLikelihood(noise=0.4)
    y = torch.tensor([0.3, -1.0, 2.0, 0.1, 1.7])
    generic = gp.Likelihood.expected_log_prob(lik, y, MEAN, VAR)  # the base class: quadrature
    # the integrand is quadratic in f: 20-node Gauss-Hermite is exact up to rounding
    assert torch.allclose(generic, lik.expected_log_prob(y, MEAN, VAR), rtol=1e-12, atol=1e-12)
    # log E p(y|f) has a Gaussian (not polynomial) integrand; its quadrature error decays
    # geometrically with the node count (7e-5, 5e-8, 1e-11 at 20, 40, 60 nodes here)
    fine = gp.GaussianLikelihood(noise=0.4, integrator=gp.GaussHermite(60))
    generic_lp = gp.Likelihood.log_predictive(fine, y, MEAN, VAR)
    assert torch.allclose(generic_lp, lik.log_predictive(y, MEAN, VAR), atol=1e-9)


def test_poisson_and_probit_closed_forms_match_quadrature():
    y = torch.tensor([0.0, 1.0, 3.0, 2.0, 7.0])
    pois = gp.Poisson()
    quad = gp.Likelihood.expected_log_prob(pois, y, MEAN, VAR)
    # e^f under N(m, v <= 1.5): the Hermite series converges fast; 1e-8 is ~100x the observed error
    assert torch.allclose(quad, pois.expected_log_prob(y, MEAN, VAR), atol=1e-8)
    mu, var = pois.predict(MEAN, VAR)
    gh = gp.GaussHermite(40)
    assert torch.allclose(mu, gh.expect(torch.exp, MEAN, VAR), rtol=1e-8)
    second = gh.expect(lambda f: torch.exp(2 * f), MEAN, VAR)
    assert torch.allclose(var, mu + second - mu.pow(2), rtol=1e-7)
    prob = gp.BernoulliProbit()
    b = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0])
    quad_lp = gp.Likelihood.log_predictive(prob, b, MEAN, VAR)
    assert torch.allclose(quad_lp, prob.log_predictive(b, MEAN, VAR), atol=1e-7)


def test_monte_carlo_integrator_agrees_with_quadrature_within_standard_errors():
    lik = gp.BernoulliLogit(integrator=gp.MonteCarlo(4000))
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    exact = gp.Likelihood.expected_log_prob(gp.BernoulliLogit(), y, MEAN, VAR)
    seed = int(torch.randint(2**31, ()))
    torch.manual_seed(seed)
    est = lik.expected_log_prob(y, MEAN, VAR)
    torch.manual_seed(seed)  # the same draws give the second moment, hence the standard error
    second = lik.integrator.expect(lambda f: lik.log_prob(f, y).pow(2), MEAN, VAR)
    se = ((second - est.pow(2)).clamp_min(0) / 4000).sqrt()
    assert bool(((est - exact).abs() <= Z * se).all())


def test_log_densities_match_scipy():
    f = torch.tensor([-1.0, 0.0, 0.5, 2.0])
    y = torch.tensor([0.3, -2.0, 4.0, 2.2])
    st = gp.StudentT(df=3.0, scale=0.7)
    want = stats.t.logpdf(y.numpy(), df=3.0, loc=f.numpy(), scale=0.7)
    assert torch.allclose(st.log_prob(f, y), torch.from_numpy(want), rtol=1e-10)
    counts = torch.tensor([0.0, 3.0, 1.0, 9.0])
    want = stats.poisson.logpmf(counts.numpy(), mu=f.exp().numpy())
    assert torch.allclose(gp.Poisson().log_prob(f, counts), torch.from_numpy(want), rtol=1e-10)
    b = torch.tensor([1.0, 0.0, 1.0, 0.0])
    want = stats.bernoulli.logpmf(b.numpy(), p=stats.norm.cdf(f.numpy()))
    assert torch.allclose(gp.BernoulliProbit().log_prob(f, b), torch.from_numpy(want), rtol=1e-10)
    want = stats.bernoulli.logpmf(b.numpy(), p=1 / (1 + torch.exp(-f)).numpy())
    assert torch.allclose(gp.BernoulliLogit().log_prob(f, b), torch.from_numpy(want), rtol=1e-10)
    gauss = gp.GaussianLikelihood(noise=0.5)
    want = stats.norm.logpdf(y.numpy(), loc=f.numpy(), scale=math.sqrt(0.5))
    assert torch.allclose(gauss.log_prob(f, y), torch.from_numpy(want), rtol=1e-10)


def test_predictive_moments():
    p, v = gp.BernoulliProbit().predict(MEAN, VAR)
    want = torch.from_numpy(stats.norm.cdf((MEAN / torch.sqrt(1 + VAR)).numpy()))
    assert torch.allclose(p, want, rtol=1e-10) and torch.allclose(v, p * (1 - p))
    m, v = gp.StudentT(df=4.0, scale=0.5).predict(MEAN, VAR)
    assert torch.equal(m, MEAN) and torch.allclose(v, VAR + 0.25 * 4.0 / 2.0)
    _, v = gp.StudentT(df=1.5).predict(MEAN, VAR)
    assert bool(torch.isinf(v).all())


@pytest.mark.parametrize(
    "lik, bad, support",
    [
        (gp.BernoulliLogit(), [0.0, 2.0], "support {0, 1}"),
        (gp.BernoulliProbit(), [0.0, float("nan")], "support {0, 1}"),
        (gp.Poisson(), [1.0, -1.0], "non-negative integers"),
        (gp.Poisson(), [1.5, 2.0], "non-negative integers"),
        (gp.GaussianLikelihood(), [0.0, float("nan")], "finite real"),
        (gp.StudentT(), [float("inf"), 0.0], "finite real"),
    ],
)
def test_targets_outside_the_support_raise(lik, bad, support):
    with pytest.raises(ValueError, match=support.replace("{", r"\{").replace("}", r"\}")):
        lik.check_y(torch.tensor(bad))


def test_integrator_sizes_and_estimators_are_validated():
    with pytest.raises(ValueError, match="num_points must be >= 1"):
        gp.GaussHermite(0)
    with pytest.raises(ValueError, match="num_samples must be >= 1"):
        gp.MonteCarlo(0)
    # STL and DReG are estimators of bounds, not of expectations: refused when the integrator is built
    with pytest.raises(ValueError, match="MonteCarlo: expect: estimator must be reparam or score"):
        gp.MonteCarlo(8, estimator=vt.estimators.stl)


def test_monte_carlo_integrator_leaves_the_random_stream_alone_when_built():
    before = torch.random.get_rng_state()
    gp.MonteCarlo(8, estimator=vt.estimators.score())
    assert torch.equal(torch.random.get_rng_state(), before)


@pytest.mark.parametrize("make_estimator", [lambda: vt.estimators.reparam, lambda: vt.estimators.score()])
def test_monte_carlo_through_core_estimators_has_unbiased_value_and_gradient(make_estimator):
    y = torch.tensor([1.0, 0.0])
    mean = torch.tensor([0.3, -1.0], requires_grad=True)
    var = torch.tensor([0.5, 1.2], requires_grad=True)
    exact = gp.BernoulliLogit().expected_log_prob(y, mean, var)
    want = torch.cat(torch.autograd.grad(exact.sum(), (mean, var)))
    lik = gp.BernoulliLogit(integrator=gp.MonteCarlo(32, estimator=make_estimator()))
    values, grads = [], []
    for _ in range(200):  # independent replicates: their spread gives the standard errors
        est = lik.expected_log_prob(y, mean, var)
        grads.append(torch.cat(torch.autograd.grad(est.sum(), (mean, var))))
        values.append(est.detach())
    values, grads = torch.stack(values), torch.stack(grads)
    se_v = values.std(0) / 200**0.5
    se_g = grads.std(0) / 200**0.5
    assert bool(((values.mean(0) - exact.detach()).abs() <= Z * se_v).all())
    assert bool(((grads.mean(0) - want).abs() <= Z * se_g).all())
