"""Markov GPs: the state-space form of each kernel, and MarkovGP against ExactGP and a dense oracle.

Oracles: ``vitorch.models.gp.ExactGP`` (Cholesky of the dense kernel matrix) and an independent dense
Gaussian built from exact pairwise distances ``|t_i - t_j|`` with scipy's Bessel functions for the
periodic series.  Everything is float64; both sides are exact, so tolerances are rounding-level (1e-8
absolute on log-likelihoods of size ~50, 1e-8 on predictive moments).
"""

from __future__ import annotations

import math

import pytest
import scipy.special
import torch
from torch.distributions import MultivariateNormal

import vitorch as vt
from vitorch.models import gp
from vitorch.models.ssm.markov_gp import MarkovGP
from vitorch.models.ssm.sde_kernels import discretize, periodic_coefficients, periodic_truncation, state_space
from vitorch.testing import ModelTestCase

torch.set_default_dtype(torch.float64)

J_EXACT = 11  # harmonics for comparisons with the exact periodic kernel: truncation error < 1e-12 at l >= 1


def _data(n=60, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.rand(n, generator=g) * 10  # irregular, unsorted times
    y = torch.sin(t) + 0.3 * torch.randn(n, generator=g)
    return t.unsqueeze(-1), y


# Kernels whose ExactGP matrix is accurate to rounding: smooth at tau = 0, so the GEMM distance's
# rounding (about sqrt(eps) |x| at tau = 0) enters only squared.
SMOOTH = {
    "matern32": lambda: gp.Matern32(lengthscale=0.9, variance=0.8),
    "matern52": lambda: gp.Matern52(lengthscale=1.1, variance=1.5),
    "scale": lambda: 2.0 * gp.Matern32(lengthscale=1.5),
    "sum": lambda: gp.Matern32(lengthscale=3.0, variance=0.5) + gp.Matern52(lengthscale=0.6),
    "quasi_periodic": lambda: gp.Product(gp.Periodic(lengthscale=1.2, period=2.0), gp.Matern32(lengthscale=4.0)),
    "qp_plus_matern": lambda: (
        gp.Product(gp.Periodic(lengthscale=1.0, period=3.0), gp.Matern52(lengthscale=6.0))
        + gp.Matern32(lengthscale=0.5, variance=0.2)
    ),
}
# Kernels with a Matern-1/2 part: exp(-r) has slope -1 at r = 0, so ExactGP's diagonal carries its
# distance rounding linearly (~1e-8 relative); these are checked against the exact-distance oracle.
ROUGH = {
    "matern12": lambda: gp.Matern12(lengthscale=0.7, variance=1.3),
    "sum_with_matern12": lambda: gp.Matern12(lengthscale=3.0, variance=0.5) + gp.Matern52(lengthscale=0.6),
}


def _dense_kernel(kernel, tau):
    """``k(tau)`` from exact distances, written from the kernels' formulas (not their code)."""
    if isinstance(kernel, gp.Sum):
        return _dense_kernel(kernel.k1, tau) + _dense_kernel(kernel.k2, tau)
    if isinstance(kernel, gp.Product):
        return _dense_kernel(kernel.k1, tau) * _dense_kernel(kernel.k2, tau)
    if isinstance(kernel, gp.Scale):
        return kernel.variance * _dense_kernel(kernel.kernel, tau)
    s2, ell = kernel.variance, kernel.lengthscale
    if isinstance(kernel, gp.Periodic):
        return s2 * torch.exp(-2 * torch.sin(math.pi * tau / kernel.period).pow(2) / ell**2)
    r = tau / ell
    if isinstance(kernel, gp.Matern12):
        return s2 * torch.exp(-r)
    if isinstance(kernel, gp.Matern32):
        return s2 * (1 + math.sqrt(3) * r) * torch.exp(-math.sqrt(3) * r)
    return s2 * (1 + math.sqrt(5) * r + 5 * r**2 / 3) * torch.exp(-math.sqrt(5) * r)


def _dense_log_lik(kernel, t, y, noise):
    K = _dense_kernel(kernel, (t[:, None] - t[None, :]).abs()) + noise * torch.eye(len(t))
    return MultivariateNormal(torch.zeros(len(t)), K).log_prob(y)


# ----------------------------------------------------------------- state-space forms


@pytest.mark.parametrize("make", [*SMOOTH.values(), *ROUGH.values()], ids=[*SMOOTH, *ROUGH])
def test_state_space_covariance_is_the_kernel(make):
    kernel = make()
    form = state_space(kernel, J_EXACT)
    with torch.no_grad():
        tau = torch.tensor([0.0, 0.05, 0.3, 1.0, 2.7, 7.0])
        A = torch.linalg.matrix_exp(form.F * tau[:, None, None])
        k_ss = (form.H @ A @ form.Pinf @ form.H.mT).reshape(-1)  # Cov(f(t + tau), f(t))
        torch.testing.assert_close(k_ss, _dense_kernel(kernel, tau), rtol=0, atol=1e-12)
        # Stationarity: F Pinf + Pinf F^T + L Qc L^T = 0.
        lyap = form.F @ form.Pinf + form.Pinf @ form.F.mT + form.L @ form.Qc @ form.L.mT
        torch.testing.assert_close(lyap, torch.zeros_like(lyap), rtol=0, atol=1e-10 * form.Pinf.abs().max())


def test_matern_forms_match_gp_kernels_at_separated_points():
    # ExactGP's own kernel code, at distances >= 0.1 where its GEMM distances are accurate.
    for kernel in (gp.Matern12(lengthscale=0.7), gp.Matern32(lengthscale=0.9), gp.Matern52(lengthscale=1.3)):
        form = state_space(kernel)
        with torch.no_grad():
            tau = torch.tensor([0.1, 0.5, 1.5, 4.0])
            k_ss = (form.H @ torch.linalg.matrix_exp(form.F * tau[:, None, None]) @ form.Pinf @ form.H.mT).reshape(-1)
            k_gp = kernel(torch.zeros(1, 1), tau.unsqueeze(-1)).reshape(-1)
        torch.testing.assert_close(k_ss, k_gp, rtol=1e-12, atol=0)


@pytest.mark.parametrize("ell", [0.3, 1.0, 3.0])
def test_periodic_coefficients_are_scaled_bessel_functions(ell):
    x = ell**-2
    c = periodic_coefficients(torch.tensor(ell), 30)
    j = torch.arange(31)
    ref = torch.as_tensor(scipy.special.ive(j.numpy(), x)) * torch.where(j == 0, 1.0, 2.0)
    torch.testing.assert_close(c, ref, rtol=0, atol=1e-14)
    assert abs(float(c.sum()) - 1) < 1e-13  # the full series sums to k(0) / s^2 = 1


def test_periodic_truncation_error_is_the_tail():
    k = gp.Periodic(lengthscale=1.0, variance=2.0)
    tail = 2.0 * float(scipy.special.ive(range(8, 60), 1.0).sum() * 2)
    assert periodic_truncation(k, 7) == pytest.approx(tail, rel=1e-10)
    assert periodic_truncation(k, J_EXACT) < 1e-12


def test_discretize_shares_equal_gaps_and_checks_order():
    form = state_space(gp.Matern32(lengthscale=0.5))
    dt = torch.tensor([0.1, 0.2, 0.1, 0.0])
    A, Q = discretize(form, dt)
    torch.testing.assert_close(A[0], A[2])
    torch.testing.assert_close(A[3], torch.eye(2))
    torch.testing.assert_close(Q[3], torch.zeros(2, 2), rtol=0, atol=1e-15)
    with pytest.raises(ValueError, match="non-negative"):
        discretize(form, torch.tensor([0.1, -0.2]))


# ----------------------------------------------------------------- log likelihood and posterior


@pytest.mark.parametrize("parallel", [False, True], ids=["sequential", "parallel"])
@pytest.mark.parametrize("make", SMOOTH.values(), ids=SMOOTH.keys())
def test_log_likelihood_and_posterior_equal_exact_gp(make, parallel):
    x, y = _data()
    kernel = make()
    exact = gp.ExactGP(kernel, noise=0.09)
    markov = MarkovGP(kernel, noise=0.09, num_harmonics=J_EXACT, parallel=parallel)
    with torch.no_grad():
        ll_e, ll_m = exact.log_marginal_likelihood(x, y), markov.log_marginal_likelihood(x, y)
        assert abs(float(ll_e - ll_m)) < 1e-8
        # Test times inside, outside and on top of the data.
        x_new = torch.cat([torch.linspace(-1.0, 11.0, 9), x[:3, 0]]).unsqueeze(-1)
        for a, b in zip(exact.predict(x, y, x_new), markov.predict(x, y, x_new)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-8)
        for a, b in zip(exact.predict_y(x, y, x_new), markov.predict_y(x, y, x_new)):
            torch.testing.assert_close(b, a, rtol=0, atol=1e-8)


@pytest.mark.parametrize("make", ROUGH.values(), ids=ROUGH.keys())
def test_matern12_kernels_equal_the_exact_distance_oracle(make):
    x, y = _data()
    kernel = make()
    with torch.no_grad():
        dense = _dense_log_lik(kernel, x[:, 0], y, 0.09)
        markov = MarkovGP(kernel, noise=0.09).log_marginal_likelihood(x, y)
        exact = gp.ExactGP(kernel, noise=0.09).log_marginal_likelihood(x, y)
    assert abs(float(markov - dense)) < 1e-8
    # ExactGP's kernel matrix now has exact zeros on its distance diagonal, so it agrees too
    # (before, |a|^2 + |b|^2 - 2ab left ~1e-7 of rounding there, moving the log-likelihood by ~7e-7).
    assert abs(float(exact - dense)) < 1e-8


def test_duplicate_times_and_quasi_periodic_with_default_harmonics():
    x, y = _data(40, seed=3)
    x = torch.cat([x, x[:5]])  # repeated times: dt = 0 transitions
    y = torch.cat([y, y[:5] + 0.1])
    kernel = gp.Product(gp.Periodic(lengthscale=1.5, period=2.5), gp.Matern32(lengthscale=5.0))
    with torch.no_grad():
        dense = _dense_log_lik(kernel, x[:, 0], y, 0.05)
        full = MarkovGP(kernel, noise=0.05, num_harmonics=J_EXACT).log_marginal_likelihood(x, y)
        trunc = MarkovGP(kernel, noise=0.05).log_marginal_likelihood(x, y)  # 7 harmonics
    assert abs(float(full - dense)) < 1e-8
    # The 7-harmonic series differs from the kernel by at most periodic_truncation (~1e-9 here) per entry.
    assert abs(float(trunc - dense)) < 1e-4


def test_gradients_equal_exact_gp():
    x, y = _data(30)
    grads = []
    for cls in (gp.ExactGP, MarkovGP):
        torch.manual_seed(0)
        kernel = gp.Matern52(lengthscale=0.8, variance=1.2) + gp.Product(
            gp.Periodic(lengthscale=1.3, period=2.0), gp.Matern32(lengthscale=3.0)
        )
        model = cls(kernel, noise=0.1) if cls is gp.ExactGP else cls(kernel, noise=0.1, num_harmonics=J_EXACT)
        model.log_marginal_likelihood(x, y).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-7, atol=1e-9)


def test_long_series_is_finite_and_linear():
    t = torch.linspace(0, 1000, 20001).unsqueeze(-1)
    y = torch.sin(t[:, 0] / 10) + 0.1 * torch.randn(20001, generator=torch.Generator().manual_seed(1))
    model = MarkovGP(gp.Matern32(lengthscale=5.0), noise=0.01)
    with torch.no_grad():
        ll = model.log_marginal_likelihood(t, y)
        mean, var = model.predict(t, y, t[::1000])
    assert torch.isfinite(ll) and torch.isfinite(mean).all() and (var > 0).all()
    assert (mean - torch.sin(t[::1000, 0] / 10)).abs().max() < 0.1  # sd 0.1 noise, posterior sd ~0.02


# ----------------------------------------------------------------- bad input


def test_bad_input():
    with pytest.raises(TypeError, match="RBF"):
        MarkovGP(gp.RBF())
    with pytest.raises(TypeError, match="Kernel"):
        MarkovGP("matern")
    with pytest.raises(ValueError, match="lengthscale must be a scalar"):
        MarkovGP(gp.Matern32(lengthscale=torch.ones(2)))
    with pytest.raises(ValueError, match="num_harmonics"):
        state_space(gp.Periodic(), num_harmonics=-1)
    model = MarkovGP(gp.Matern32())
    x, y = _data(10)
    with pytest.raises(ValueError, match=r"\[N, 1\]"):
        model.log_marginal_likelihood(torch.cat([x, x], -1), y)
    with pytest.raises(ValueError, match="y"):
        model.log_marginal_likelihood(x, torch.full_like(y, float("nan")))
    with pytest.raises(TypeError, match="dtype"):
        model.log_marginal_likelihood(x.float(), y.float())


# ----------------------------------------------------------------- model protocol


class TestMarkovGPProtocol(ModelTestCase):
    """``forward((X, y))`` reports ``log p(y) / N`` per datum: equal to ExactGP's evidence."""

    batch_size = 24
    fit_kwargs = {"lr": 0.05}

    def make_model(self):
        return MarkovGP(gp.Matern52(lengthscale=1.0) + gp.Matern32(lengthscale=3.0, variance=0.3), noise=0.1)

    def make_data(self):
        return _data(24)

    def exact_log_evidence(self, model, batch):
        x, y = batch
        exact = gp.ExactGP(model.kernel, noise=model.noise.detach())
        return (exact.log_marginal_likelihood(x, y) / len(y)).expand(len(y))

    def predict_args(self, batch):
        return batch[0], batch[1], batch[0][:5]


def test_fit_raises_the_likelihood():
    x, y = _data(50)
    model = MarkovGP(gp.Matern32(lengthscale=0.1, variance=0.1), noise=1.0)
    with torch.no_grad():
        before = model.log_marginal_likelihood(x, y)
    vt.fit(model, (x, y), steps=30, batch_size=50, lr=0.1, progress=False, seed=0)
    with torch.no_grad():
        after = model.log_marginal_likelihood(x, y)
    assert after > before + 10
