"""CVI natural-gradient steps for any likelihood, the dual (site) parameterization and the EP-like
objective: against SGPR's optimal q, the optimum found by other optimizers, exact GP evidence, and
the EP energy evaluated from its definition by scipy quadrature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate

from vitorch.families import DiagNormal
from vitorch.models import gp
from vitorch.models.gp import cvi

# Identities between two float64 routes to one number: rounding is ~1e-12 at these sizes; 1e-8
# leaves room for the Cholesky solves of matrices with condition numbers up to ~1e4.
TOL = 1e-8
N, M = 40, 8


def _data(n=N, classify=False):
    x = torch.rand(n, 2) * 3
    f = torch.sin(2 * x).sum(-1)
    if classify:
        return x, (f + 0.3 * torch.randn(n) > 0).double()
    return x, f + 0.1 * torch.randn(n)


def _kernel():
    return gp.RBF(torch.tensor([0.8, 1.3]), 1.2)


def _svgp(lik, z, **kw):
    return gp.SVGP(_kernel(), z, lik, num_data=N, **kw)


@pytest.mark.parametrize("whiten", [True, False])
def test_gaussian_one_full_step_is_the_sgpr_optimum(whiten):
    x, y = _data()
    z = torch.rand(M, 2) * 3
    model = _svgp(gp.GaussianLikelihood(0.1), z, whiten=whiten, mean=gp.ConstantMean(0.3))
    with torch.no_grad():
        model.q_loc.normal_()  # start away from the prior: lr = 1 forgets the start entirely
    cvi.cvi_step(model, x, y, lr=1.0)
    sgpr = gp.SGPR(_kernel(), z, noise=0.1, mean=gp.ConstantMean(0.3))
    want = sgpr.optimal_q(x, y, whiten=whiten)
    torch.testing.assert_close(model.q().loc, want.loc, rtol=0, atol=TOL)
    torch.testing.assert_close(model.q().covariance_matrix, want.covariance_matrix, rtol=0, atol=TOL)
    with torch.no_grad():
        assert abs(float(model.full_data_elbo(x, y) - sgpr.full_data_elbo(x, y))) < 1e-6
    # and a partial step is the Gaussian natural-gradient step of SVGP itself
    a, b = _svgp(gp.GaussianLikelihood(0.1), z, whiten=whiten), _svgp(gp.GaussianLikelihood(0.1), z, whiten=whiten)
    cvi.cvi_step(a, x[:10], y[:10], lr=0.3)
    b.natural_gradient_step(x[:10], y[:10], lr=0.3)
    for p, q in zip(a.variational_parameters(), b.variational_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=TOL)


def test_gaussian_sites_are_the_likelihood():
    x, y = _data()
    model = _svgp(gp.GaussianLikelihood(0.1), x[:M], mean=gp.ConstantMean(-0.2))
    with torch.no_grad():
        model.q_loc.normal_()
    sites = cvi.site_parameters(model, x, y)
    # lam = 1 / sigma^2 and eta = (y - m(x)) / sigma^2 whatever q is (Khan & Lin, 2017, sec. 3)
    torch.testing.assert_close(sites.lam, torch.full((N,), 10.0), rtol=0, atol=1e-10)
    torch.testing.assert_close(sites.eta, (y + 0.2) / 0.1, rtol=0, atol=1e-10)


LIKELIHOODS = [
    (gp.BernoulliLogit, True, 1.0),
    (gp.BernoulliProbit, True, 1.0),
    (gp.Poisson, "counts", 1.0),
    (lambda: gp.StudentT(df=4.0, scale=0.3), False, 0.2),  # not log-concave: damped steps
]


def _targets(kind, x, y):
    if kind == "counts":
        return torch.poisson(torch.exp(torch.sin(2 * x).sum(-1)))
    return y


@pytest.mark.parametrize("make,kind,lr", LIKELIHOODS)
def test_fixed_point_is_a_stationary_point_of_the_svgp_bound(make, kind, lr):
    x, y = _data(classify=kind is True)
    y = _targets(kind, x, y)
    model = _svgp(make(), torch.rand(M, 2) * 3)
    for _ in range(120):
        cvi.cvi_step(model, x, y, lr=lr)
    model.full_data_elbo(x, y).backward()
    # |dELBO/dq| ~ N * curvature ~ 10-100 away from the optimum; at the fixed point it is rounding
    for p in model.variational_parameters():
        assert float(p.grad.abs().max()) < 1e-7
    # the fixed point's sites rebuild q exactly (Adam et al., 2021: q is p(u) times its sites)
    q = cvi.q_from_sites(model, x, cvi.site_parameters(model, x, y))
    torch.testing.assert_close(q.loc, model.q().loc, rtol=0, atol=1e-7)
    torch.testing.assert_close(q.covariance_matrix, model.q().covariance_matrix, rtol=0, atol=1e-7)


def _bernoulli_cvi(x, y, z):
    model = _svgp(gp.BernoulliLogit(), z)
    for _ in range(20):
        cvi.cvi_step(model, x, y, lr=1.0)
    return model


def _compare_optimum(other, model, x, y, tol):
    with torch.no_grad():
        assert abs(float(other.full_data_elbo(x, y) - model.full_data_elbo(x, y))) < tol
    torch.testing.assert_close(other.q().loc, model.q().loc, rtol=0, atol=math.sqrt(tol))
    torch.testing.assert_close(other.q().covariance_matrix, model.q().covariance_matrix, rtol=0, atol=math.sqrt(tol))


def test_bernoulli_fixed_point_is_the_lbfgs_optimum():
    x, y = _data(classify=True)
    z = torch.rand(M, 2) * 3
    model = _bernoulli_cvi(x, y, z)
    other = _svgp(gp.BernoulliLogit(), z)
    opt = torch.optim.LBFGS(
        other.variational_parameters(), max_iter=400, tolerance_grad=1e-12, tolerance_change=1e-15,
        history_size=50, line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = -other.full_data_elbo(x, y)
        loss.backward()
        return loss

    opt.step(closure)
    # the bound is strictly concave in q's natural parameters (Bernoulli is log-concave): one optimum.
    # L-BFGS stops at gradient ~1e-9, an ELBO gap ~1e-12 and parameters within ~1e-6.
    _compare_optimum(other, model, x, y, 1e-10)


@pytest.mark.slow
def test_bernoulli_fixed_point_is_the_adam_optimum():
    x, y = _data(classify=True)
    z = torch.rand(M, 2) * 3
    model = _bernoulli_cvi(x, y, z)
    other = _svgp(gp.BernoulliLogit(), z)
    opt = torch.optim.Adam(other.variational_parameters(), lr=0.01)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1500, 0.3)
    for _ in range(6000):
        opt.zero_grad()
        (-other.full_data_elbo(x, y)).backward()
        opt.step()
        sched.step()
    # 6000 Adam steps with a decaying rate reach the optimum to ~1e-14 in the bound here
    _compare_optimum(other, model, x, y, 1e-9)


def test_dual_elbo_with_gaussian_sites_is_the_collapsed_bound_at_every_kernel():
    x, y = _data()
    z = torch.rand(M, 2) * 3
    model = _svgp(gp.GaussianLikelihood(0.1), z)
    cvi.cvi_step(model, x, y, lr=1.0)
    sites = cvi.site_parameters(model, x, y)
    # move the kernel: the sites stay, q follows (dual parameterization) and stays optimal
    model.kernel.lengthscale = torch.tensor([0.5, 2.0])
    model.kernel.variance = 0.7
    got = cvi.dual_elbo(model, x, y, sites)
    sgpr = gp.SGPR(model.kernel, z, noise=0.1)
    want = sgpr.full_data_elbo(x, y)
    assert abs(float(got.detach() - want.detach())) < 1e-8
    g_got = torch.autograd.grad(got, list(model.kernel.parameters()))
    g_want = torch.autograd.grad(want, list(model.kernel.parameters()))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def _ep_energy_by_definition(k, y, eta, lam, lik, power):
    """EP's energy with sites (eta, lam) on a full GP f ~ N(0, K), from its definition: dense
    Gaussian algebra for log Z_t and scipy quadrature for every one-dimensional integral."""
    k, y, eta, lam = (t.numpy() for t in (k, y, eta, lam))
    n = len(y)
    sigma = np.linalg.inv(np.linalg.inv(k) + np.diag(lam))
    mu = sigma @ eta
    log_zt = -0.5 * np.linalg.slogdet(np.eye(n) + k @ np.diag(lam))[1] + 0.5 * eta @ sigma @ eta
    total = log_zt
    for i in range(n):
        prec = 1 / sigma[i, i] - power * lam[i]
        cm, cv = (mu[i] / sigma[i, i] - power * eta[i]) / prec, 1 / prec

        def gauss(f, cm=cm, cv=cv):
            return math.exp(-0.5 * (f - cm) ** 2 / cv) / math.sqrt(2 * math.pi * cv)

        lo, hi = cm - 12 * math.sqrt(cv), cm + 12 * math.sqrt(cv)
        lik_f = lambda f, i=i: math.exp(power * float(lik.log_prob(torch.tensor(f), torch.tensor(y[i]))))  # noqa: E731
        site_f = lambda f, i=i: math.exp(power * (eta[i] * f - 0.5 * lam[i] * f * f))  # noqa: E731
        tilted = integrate.quad(lambda f, h=lik_f: gauss(f) * h(f), lo, hi, epsabs=0, epsrel=1e-12)[0]
        site = integrate.quad(lambda f, h=site_f: gauss(f) * h(f), lo, hi, epsabs=0, epsrel=1e-12)[0]
        total += (math.log(tilted) - math.log(site)) / power
    return total


@pytest.mark.parametrize("power", [1.0, 0.5])
def test_ep_objective_matches_its_definition_on_a_full_gp(power):
    n = 12
    x, y = _data(n, classify=True)
    lik = gp.BernoulliLogit(integrator=gp.GaussHermite(60))
    model = gp.SVGP(_kernel(), x.clone(), lik, num_data=n)  # Z = X: the sparse model is the full GP
    sites = cvi.Sites(torch.randn(n), torch.rand(n) * 0.3 + 0.05)
    got = float(cvi.ep_objective(model, x, y, sites, power=power).detach())
    want = _ep_energy_by_definition(_kernel()(x).detach(), y, sites.eta, sites.lam, lik, power)
    # scipy at rtol 1e-12 and 60-node Gauss-Hermite on smooth integrands agree to ~1e-10 per datum
    assert abs(got - want) < 1e-8


@pytest.mark.parametrize("power", [1.0, 0.4])
def test_ep_objective_with_gaussian_sites_is_the_exact_evidence(power):
    x, y = _data(20)
    model = gp.SVGP(_kernel(), x.clone(), gp.GaussianLikelihood(0.1), num_data=20)
    sites = cvi.Sites(y / 0.1, torch.full((20,), 10.0))
    want = gp.ExactGP(_kernel(), noise=0.1).log_marginal_likelihood(x, y)
    assert abs(float((cvi.ep_objective(model, x, y, sites, power=power) - want).detach())) < 1e-7


def test_ep_objective_tends_to_the_dual_elbo_as_power_vanishes():
    x, y = _data(classify=True)
    model = _bernoulli_cvi(x, y, torch.rand(M, 2) * 3)  # sparse: Z is not X
    sites = cvi.site_parameters(model, x, y)
    a = 1e-4
    with torch.no_grad():
        # L_alpha = ELBO + c alpha + O(alpha^2): Richardson's 2 L_a - L_2a removes the linear term
        extrapolated = 2 * cvi.ep_objective(model, x, y, sites, a) - cvi.ep_objective(model, x, y, sites, 2 * a)
        elbo = cvi.dual_elbo(model, x, y, sites)
        energy = cvi.ep_objective(model, x, y, sites)
    assert abs(float(extrapolated - elbo)) < 1e-6
    # and EP's energy differs from the ELBO (the two objectives are not the same function)
    assert abs(float(energy - elbo)) > 1e-2


def test_ep_objective_trains_hyperparameters():
    x, y = _data(classify=True)
    model = _bernoulli_cvi(x, y, torch.rand(M, 2) * 3)
    sites = cvi.site_parameters(model, x, y)
    loss = -cvi.ep_objective(model, x, y, sites)
    loss.backward()
    for name, p in model.kernel.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()), name


def test_bad_input_raises():
    x, y = _data(classify=True)
    model = _svgp(gp.BernoulliLogit(), x[:4])
    with pytest.raises(TypeError, match="needs a vitorch.models.gp.SVGP"):
        cvi.cvi_step(gp.SGPR(_kernel(), x[:4]), x, y)
    with pytest.raises(ValueError, match="family=FullRankNormal"):
        cvi.cvi_step(_svgp(gp.BernoulliLogit(), x[:4], family=DiagNormal), x, y)
    with pytest.raises(ValueError, match="lr must lie in"):
        cvi.cvi_step(model, x, y, lr=0.0)
    with pytest.raises(ValueError, match="support"):
        cvi.cvi_step(model, x, y + 0.5)
    sites = cvi.site_parameters(model, x, y)
    with pytest.raises(ValueError, match="power must lie in"):
        cvi.ep_objective(model, x, y, sites, power=1.5)
    with pytest.raises(ValueError, match=r"sites.eta must have shape \[N\]"):
        cvi.dual_elbo(model, x, y, cvi.Sites(sites.eta[:3], sites.lam))
    with pytest.raises(TypeError, match="sites must be"):
        cvi.q_from_sites(model, x, (sites.eta, sites.lam))
