"""Objectives: deterministic identities, the bound sandwich against exact log Z, numerical safety, MMD.

Statistical assertions use ``Z`` standard errors (conftest) estimated from the same draws.
"""

from __future__ import annotations

import math

import pytest
import torch

import vitorch as vt

from conftest import Z
from core import lingauss as lg

O = vt.objectives
ALL = [O.elbo, O.iwae, O.miwae(2), O.ciwae(0.3), O.renyi(0.5), O.renyi(2.0), O.cubo(2), O.cubo(3), O.piwae(2), O.vis()]


def _log_w(K=4, B=(3,), spread=1.0):
    return spread * torch.randn(K, *B)


def test_identities_on_the_same_particles():
    lw = _log_w(8, (5, 2), spread=2.0)
    K = lw.shape[0]
    iw = torch.logsumexp(lw, 0) - math.log(K)
    torch.testing.assert_close(O.iwae(lw), iw)
    torch.testing.assert_close(O.elbo(lw), lw.mean(0))
    assert (O.elbo(lw) <= O.iwae(lw) + 1e-12).all()  # Jensen, particle by particle
    assert (O.iwae(lw) <= O.cubo(2)(lw) + 1e-12).all()  # power means increase with the power
    torch.testing.assert_close(O.iwae(lw[:1]), O.elbo(lw[:1]))  # K = 1
    torch.testing.assert_close(O.miwae(1)(lw), O.iwae(lw))
    torch.testing.assert_close(O.miwae(K)(lw), O.elbo(lw))
    torch.testing.assert_close(O.miwae(2)(lw), 0.5 * (O.iwae(lw[:4]) + O.iwae(lw[4:])))
    torch.testing.assert_close(O.ciwae(1.0)(lw), O.elbo(lw))
    torch.testing.assert_close(O.ciwae(0.0)(lw), O.iwae(lw))
    torch.testing.assert_close(O.ciwae(0.25)(lw), 0.25 * O.elbo(lw) + 0.75 * O.iwae(lw))
    torch.testing.assert_close(O.renyi(0.0)(lw), O.iwae(lw))
    assert O.renyi(1.0) is O.elbo
    torch.testing.assert_close(O.renyi(1 - 1e-7)(lw), O.elbo(lw), rtol=1e-5, atol=1e-5)
    alphas = [0.0, 0.3, 0.9, 2.0, 5.0]
    vals = torch.stack([O.renyi(a)(lw) for a in alphas])
    assert (vals[1:] <= vals[:-1] + 1e-12).all()  # the Renyi bound decreases in alpha
    torch.testing.assert_close(O.cubo(2)(lw), 0.5 * (torch.logsumexp(2 * lw, 0) - math.log(K)))
    torch.testing.assert_close(O.piwae(2)(lw), O.iwae(lw))
    torch.testing.assert_close(O.vis()(lw), O.iwae(lw))


@pytest.mark.parametrize("objective", ALL, ids=str)
def test_grad_coefficients_match_autograd(objective):
    lw = _log_w(6, (4,), spread=2.0).requires_grad_(True)
    (g,) = torch.autograd.grad(objective.model(lw).sum(), lw)
    torch.testing.assert_close(vt.estimators.grad_weights(objective.model, lw), g)
    (g,) = torch.autograd.grad(objective.guide(lw).sum(), lw)
    torch.testing.assert_close(vt.estimators.grad_weights(objective.guide, lw), g)


@pytest.mark.parametrize("objective", ALL, ids=str)
def test_gradcheck(objective):
    lw = _log_w(4, (3,)).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: objective(x), (lw,))


def test_every_bound_equals_log_z_at_the_posterior():
    x, theta = torch.randn(6, 3), torch.randn(3)
    mu, tau = lg.posterior(x, theta)
    out = vt.loss(lg.log_joint(x, theta), vt.DiagNormal(mu, tau), 10)
    log_z = lg.log_evidence(x, theta)
    for objective in ALL:
        torch.testing.assert_close(objective(out.log_w), log_z, rtol=0, atol=1e-12)


def test_bound_sandwich_in_expectation():
    """E[ELBO] <= E[IWAE_5] <= E[IWAE_50] <= log Z <= CUBO_2, with CUBO_2 in closed form.

    R replicates (batch elements) of one datum; each inequality between Monte Carlo
    means is checked within Z standard errors of the paired difference, and against
    the exact values where they exist.
    """
    R = 20_000
    x, theta = torch.tensor([0.8, -0.4]), torch.tensor([0.1, 0.3])
    m, s = torch.tensor([0.2, 0.1]), torch.tensor([0.9, 0.8])  # wider than the posterior (sd 0.707)
    q = vt.DiagNormal(m.expand(R, 2), s.expand(R, 2))
    lw = vt.loss(lg.log_joint(x.expand(R, 2), theta), q, 50).log_w
    log_z = lg.log_evidence(x, theta).item()
    elbo, iw5, iw50 = O.elbo(lw[:5]), O.iwae(lw[:5]), O.iwae(lw)

    def lower(a, b):  # E[a] <= E[b] up to sampling error of the paired difference
        d = b - a
        assert d.mean() > -Z * d.std() / R**0.5

    lower(elbo, iw5)
    lower(iw5, iw50)
    assert iw50.mean() < log_z + Z * iw50.std() / R**0.5
    # the ELBO's Monte Carlo mean matches its closed form
    assert abs(elbo.mean() - lg.exact_elbo(x, theta, m, s)) < Z * elbo.std() / R**0.5
    cubo = 0.5 * lg.exact_log_second_moment(x, theta, m, s).item()
    assert cubo >= log_z
    # the per-replicate mean of w^2 is unbiased for E_q[w^2] = exp(2 CUBO_2)
    w2 = torch.exp(2 * O.cubo(2)(lw)) / math.exp(2 * cubo)
    assert abs(w2.mean() - 1) < Z * w2.std() / R**0.5


@pytest.mark.parametrize("objective", ALL, ids=str)
def test_log_sum_exp_safety(objective):
    lw = torch.tensor([[1e4, -1e4, 0.0], [1e4 - 1.0, -1e4, 0.0], [-3.0, -1e4, 0.0], [0.0, -1e4, 0.0]])
    lw = lw.requires_grad_(True)
    val = objective(lw)
    assert torch.isfinite(val).all()
    (g,) = torch.autograd.grad(val.sum(), lw)
    assert torch.isfinite(g).all()
    # A datum whose particles all have zero weight: a finite bound at the floor
    # (-1e30, not -inf, so a batch loss stays finite) and a zero gradient, not NaN.
    dead = torch.full((4, 2), -torch.inf).requires_grad_(True)
    val = objective(dead)
    assert torch.isfinite(val).all() and (val <= -1e29).all()
    (g,) = torch.autograd.grad(val.sum(), dead)
    assert (g == 0).all()
    one = torch.randn(1, 3).requires_grad_(True)
    if not objective.reasons(1):
        torch.testing.assert_close(objective(one), one[0])  # K = 1: every bound is log w


@pytest.mark.parametrize("objective", [O.elbo, O.iwae, O.miwae(2), O.cubo(2)], ids=str)
def test_half_precision(objective):
    lw = (20 * torch.randn(8, 5)).half().requires_grad_(True)
    val = objective(lw)
    assert val.dtype == torch.float16 and torch.isfinite(val).all()
    (g,) = torch.autograd.grad(val.float().sum(), lw)
    assert torch.isfinite(g).all()
    torch.testing.assert_close(val.double(), objective(lw.double()), rtol=2e-3, atol=5e-2)


def test_bad_parameters():
    for make, needle in [
        (lambda: O.miwae(0), "positive integer"),
        (lambda: O.miwae(1.5), "positive integer"),
        (lambda: O.ciwae(1.5), r"\[0, 1\]"),
        (lambda: O.renyi(-0.5), "cubo"),
        (lambda: O.renyi(float("nan")), "alpha"),
        (lambda: O.cubo(1.0), "> 1"),
        (lambda: O.piwae(0), "positive integer"),
    ]:
        with pytest.raises(ValueError, match=needle):
            make()
    assert O.miwae(3).reasons(7) == ["miwae(M=3): M=3 does not divide K=7"]


def _mmd_brute(x, y, kernel, s):
    d = x.shape[-1]

    def k(a, b):
        r2 = (a - b).pow(2).sum()
        return torch.exp(-r2 / (2 * s * s)) if kernel == "rbf" else (2 * d * s * s) / (2 * d * s * s + r2)

    n, m = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - 2 * kxy


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_matches_definition(kernel):
    x, y = torch.randn(7, 3), torch.randn(5, 3) + 0.5
    torch.testing.assert_close(O.mmd(x, y, kernel, scale=1.3), _mmd_brute(x, y, kernel, 1.3))
    torch.testing.assert_close(
        O.mmd(x, y, kernel, scale=[0.5, 2.0]), _mmd_brute(x, y, kernel, 0.5) + _mmd_brute(x, y, kernel, 2.0)
    )


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_mmd_unbiased_under_the_null_and_positive_under_a_shift(kernel):
    R, n = 4000, 16  # replicates along a batch dimension
    same = O.mmd(torch.randn(R, n, 2), torch.randn(R, n, 2), kernel)
    assert abs(same.mean()) < Z * same.std() / R**0.5
    shifted = O.mmd(torch.randn(R, n, 2), torch.randn(R, n, 2) + 0.5, kernel)
    assert shifted.mean() > Z * shifted.std() / R**0.5


def test_mmd_gradient_finite_when_samples_coincide():
    x = torch.zeros(4, 3, requires_grad=True)
    val = O.mmd(x, torch.zeros(4, 3))
    (g,) = torch.autograd.grad(val, x)
    assert torch.isfinite(g).all()
    y = torch.randn(5, 3)
    assert torch.autograd.gradcheck(lambda a: O.mmd(a, y, "imq"), (torch.randn(4, 3).requires_grad_(True),))


def test_mmd_bad_input():
    with pytest.raises(ValueError, match="kernel"):
        O.mmd(torch.randn(3, 2), torch.randn(3, 2), kernel="gauss")
    with pytest.raises(ValueError, match="at least 2"):
        O.mmd(torch.randn(1, 2), torch.randn(3, 2))
    with pytest.raises(ValueError, match="same D"):
        O.mmd(torch.randn(3, 2), torch.randn(3, 4))
    with pytest.raises(ValueError, match="scale"):
        O.mmd(torch.randn(3, 2), torch.randn(3, 2), scale=0.0)


@pytest.mark.parametrize("objective", ALL, ids=str)
def test_objectives_run_under_vmap_and_func_grad(objective):
    # Objectives read no values, so torch.func transforms go through them unchanged.
    lw = torch.randn(3, 6, 4)
    lw[0, 1, 2] = -torch.inf
    batched = torch.vmap(objective)(lw)
    torch.testing.assert_close(batched, torch.stack([objective(a) for a in lw]))
    g = torch.func.grad(lambda a: objective(a).sum())(lw[1])
    x = lw[1].clone().requires_grad_(True)
    (expected,) = torch.autograd.grad(objective(x).sum(), x)
    torch.testing.assert_close(g, expected)
