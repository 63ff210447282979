"""MarkovVariationalGP: CVI sites with Kalman smoothing against dense Gaussian VI.

Oracles (float64, independent of the Kalman code): the dense kernel matrix ``K`` of ``ExactGP``'s
kernel, the dense Gaussian ``q = N(mu, S)``, ``S = (K^-1 + diag(1/v~))^-1``, ``mu = S diag(1/v~) y~``
implied by the sites, and the closed-form ELBO ``E_q log p(y | f) - KL(N(mu, S) || N(0, K))`` with torch's
MVN KL.  At a CVI fixed point the optimality conditions of Gaussian VI hold: ``S^-1 = K^-1 - 2 diag(g_s)``
and ``K^-1 mu = g_m`` with ``g = dE_q log p / d(m, s)`` (Opper & Archambeau, 2009).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import vitorch as vt
from vitorch.models import gp
from vitorch.models.ssm.markov_cvi import MarkovVariationalGP
from vitorch.testing import ModelTestCase

torch.set_default_dtype(torch.float64)


def _counts(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 10
    f = 1.5 * torch.sin(t) + 0.5
    return t.unsqueeze(-1), torch.poisson(f.exp(), generator=g)


def _kernel_matrix(kernel, t):
    """``K`` from exact distances ``|t_i - t_j|`` (ExactGP's GEMM distances put ~1e-8 on a Matern-1/2 diagonal)."""
    with torch.no_grad():
        r = (t[:, None] - t[None, :]).abs() / kernel.lengthscale
        if isinstance(kernel, gp.Matern12):
            return kernel.variance * torch.exp(-r)
        return kernel.variance * (1 + 3**0.5 * r) * torch.exp(-(3**0.5) * r)


def _dense_q(model, x):
    """Dense posterior implied by the sites (sites in (t, y) order, here with distinct times: time order).

    ``S = K - K (K + V)^-1 K`` and ``mu = K (K + V)^-1 y~``: solves with the well-conditioned ``K + V``.
    """
    y_site, v_site = model.sites()
    t = x[:, 0].sort().values.unsqueeze(-1)
    K = _kernel_matrix(model.kernel, t[:, 0])
    KV = K + torch.diag(v_site)
    S = K - K @ torch.linalg.solve(KV, K)
    return t, K, K @ torch.linalg.solve(KV, y_site), S


def test_gaussian_likelihood_one_step_is_exact():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(40, 1, generator=g) * 8
    y = torch.cos(x[:, 0]) + 0.2 * torch.randn(40, generator=g)
    kernel = gp.Matern52(lengthscale=1.2) + gp.Product(gp.Periodic(period=3.0), gp.Matern32(lengthscale=5.0))
    model = MarkovVariationalGP(kernel, gp.GaussianLikelihood(0.04), num_data=40, num_harmonics=11)
    model.update_sites(x, y, steps=1, lr=1.0)  # CVI with beta = 1 recovers the exact sites at once
    exact = gp.ExactGP(kernel, noise=0.04)
    with torch.no_grad():
        assert abs(float(model.elbo(x, y) - exact.log_marginal_likelihood(x, y))) < 1e-8
        x_new = torch.linspace(-1, 9, 7).unsqueeze(-1)
        for a, b in zip(exact.predict(x, y, x_new), model.predict(x, y, x_new)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-8)


@pytest.mark.parametrize("kernel", [gp.Matern32(lengthscale=1.0), gp.Matern12(lengthscale=2.0, variance=0.7)])
def test_poisson_fixed_point_is_the_optimal_gaussian(kernel):
    x, y = _counts()
    model = MarkovVariationalGP(kernel, gp.Poisson(), num_data=len(y))
    model.update_sites(x, y, steps=40)
    t, K, mu, S = _dense_q(model, x)
    with torch.no_grad():
        _, m, s, _, _ = model._posterior(t[:, 0], torch.zeros(len(y)))
        # The smoother's marginals are the dense Gaussian's (exact algebra; inv(K) costs ~1e-10).
        torch.testing.assert_close(m, mu, rtol=0, atol=1e-8)
        torch.testing.assert_close(s, S.diagonal(), rtol=0, atol=1e-8)
        # Closed-form ELBO against the dense one.
        y_sorted = y[x[:, 0].argsort()]
        dense = gp.Poisson().expected_log_prob(y_sorted, mu, S.diagonal()).sum() - kl_divergence(
            MultivariateNormal(mu, S), MultivariateNormal(torch.zeros(len(y)), K)
        )
        assert abs(float(model.elbo(x, y) - dense)) < 1e-8
    # Fixed-point (optimality) conditions of Gaussian VI, at 40 CVI steps converged to ~1e-12.
    m_, s_ = mu.clone().requires_grad_(), S.diagonal().clone().requires_grad_()
    g_m, g_s = torch.autograd.grad(gp.Poisson().expected_log_prob(y_sorted, m_, s_).sum(), (m_, s_))
    _, v_site = model.sites()
    torch.testing.assert_close(1 / v_site, -2 * g_s, rtol=1e-8, atol=0)
    torch.testing.assert_close(torch.linalg.solve(K, mu), g_m, rtol=0, atol=1e-6)  # K is ill-conditioned


def test_fixed_point_maximizes_the_elbo():
    x, y = _counts(30, seed=2)
    model = MarkovVariationalGP(gp.Matern32(lengthscale=1.5), gp.Poisson(), num_data=30)
    model.update_sites(x, y, steps=40)
    with torch.no_grad():
        best = model.elbo(x, y)
        g = torch.Generator().manual_seed(0)
        nat1, nat2 = model.site_nat1.clone(), model.site_nat2.clone()
        for scale in (1e-1, 1e-2):
            model.site_nat1.copy_(nat1 + scale * torch.randn(30, generator=g))
            model.site_nat2.copy_(nat2 * (1 + scale * torch.rand(30, generator=g)))
            assert model.elbo(x, y) < best
        model.site_nat1.copy_(nat1)
        model.site_nat2.copy_(nat2)


def test_row_order_does_not_matter():
    x, y = _counts(25, seed=3)
    model = MarkovVariationalGP(gp.Matern32(lengthscale=1.0), gp.Poisson(), num_data=25)
    model.update_sites(x, y, steps=10)
    perm = torch.randperm(25, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ell, kl = model.elbo_terms(x, y)
        ell_p, kl_p = model.elbo_terms(x[perm], y[perm])
    torch.testing.assert_close(ell_p, ell[perm], rtol=0, atol=1e-12)
    assert abs(float(kl - kl_p)) < 1e-10


def test_fit_learns_hyperparameters():
    x, y = _counts(40, seed=4)
    model = MarkovVariationalGP(gp.Matern32(lengthscale=0.2, variance=0.2), gp.Poisson(), num_data=40)
    model.update_sites(x, y, steps=10)
    with torch.no_grad():
        before = float(model.elbo(x, y))
    vt.fit(model, (x, y), steps=20, batch_size=40, lr=0.1, progress=False, seed=0)
    model.update_sites(x, y, steps=10)
    with torch.no_grad():
        assert float(model.elbo(x, y)) > before + 5
    mean, _ = model.predict(x, y, torch.tensor([[2.0], [5.0]]))
    assert torch.isfinite(mean).all()


def test_bad_input():
    x, y = _counts(10)
    with pytest.raises(ValueError, match="num_data"):
        MarkovVariationalGP(gp.Matern32(), gp.Poisson(), num_data=0)
    with pytest.raises(ValueError, match="cvi_lr"):
        MarkovVariationalGP(gp.Matern32(), gp.Poisson(), num_data=10, cvi_lr=0.0)
    with pytest.raises(TypeError, match="Likelihood"):
        MarkovVariationalGP(gp.Matern32(), "poisson", num_data=10)
    with pytest.raises(TypeError, match="RBF"):
        MarkovVariationalGP(gp.RBF(), gp.Poisson(), num_data=10)
    model = MarkovVariationalGP(gp.Matern32(), gp.Poisson(), num_data=10)
    with pytest.raises(ValueError, match="N = 10"):
        model.update_sites(x[:5], y[:5])
    with pytest.raises(ValueError, match="non-negative integers"):
        model.update_sites(x, y - 100)


class TestMarkovVariationalGPProtocol(ModelTestCase):
    """Gaussian likelihood: the exact evidence bounds the ELBO (equal once the sites have converged)."""

    batch_size = 24
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        return MarkovVariationalGP(gp.Matern32(lengthscale=1.0), gp.GaussianLikelihood(0.1), num_data=24)

    def make_data(self):
        g = torch.Generator().manual_seed(0)
        x = torch.rand(24, 1, generator=g) * 5
        return x, torch.sin(x[:, 0]) + 0.3 * torch.randn(24, generator=g)

    def exact_log_evidence(self, model, batch):
        x, y = batch
        exact = gp.ExactGP(model.kernel, noise=model.likelihood.noise.detach())
        return (exact.log_marginal_likelihood(x, y) / len(y)).expand(len(y))

    def predict_args(self, batch):
        return batch[0], batch[1], batch[0][:4]
