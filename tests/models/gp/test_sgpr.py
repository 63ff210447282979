"""Titsias' collapsed bound: equals the exact evidence at Z = X, stays below it otherwise, stays accurate
when K_mm is nearly singular."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from vitorch.models import gp

# Float64 identities through two Choleskys of well-scaled matrices: the brief's 1e-6.
EXACT_TOL = 1e-6


def _data(n=40, d=2):
    x = torch.rand(n, d) * 3
    y = torch.sin(2 * x).sum(-1) + 0.1 * torch.randn(n)
    return x, y


def test_inducing_at_training_inputs_equals_exact_evidence():
    x, y = _data()
    k = gp.RBF(torch.tensor([0.7, 1.1]), 1.3)
    with torch.no_grad():
        exact = gp.ExactGP(k, noise=0.1).log_marginal_likelihood(x, y)
        bound = gp.SGPR(k, x, noise=0.1).full_data_elbo(x, y)
    assert abs(float(bound - exact)) < EXACT_TOL


def test_accurate_where_an_explicit_inverse_of_kmm_is_not():
    # 40 evenly spaced inputs, RBF lengthscale 0.065: cond(K_mm) ~ 3e12, still factorable in float64
    n, s2 = 40, 0.01
    x = torch.linspace(0, 1, n).unsqueeze(-1)
    y = torch.sin(6 * x[:, 0]) + 0.1 * torch.randn(n)
    k = gp.RBF(0.065)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("error")  # no jitter may be needed: it would shift the bound by ~N eps / 2 s2
        exact = gp.ExactGP(k, noise=s2).log_marginal_likelihood(x, y)
        bound = gp.SGPR(k, x, noise=s2).full_data_elbo(x, y)
        kxx = k(x)
        q = kxx @ torch.linalg.inv(kxx) @ kxx  # the naive Nystrom approximation
        c = q + s2 * torch.eye(n)
        naive = -0.5 * (n * math.log(2 * math.pi) + torch.linalg.slogdet(c)[1] + y @ torch.linalg.solve(c, y))
        naive = naive - 0.5 * (kxx.diagonal() - q.diagonal()).sum() / s2
    assert abs(float(bound - exact)) < EXACT_TOL
    assert abs(float(naive - exact)) > 100 * EXACT_TOL  # the test has power: the naive route fails it


@pytest.mark.parametrize("m", [1, 5, 15])
def test_bound_is_below_exact_for_random_inducing_sets(m):
    x, y = _data()
    k = gp.Matern52(torch.tensor([0.8, 1.2]), 0.9)
    with torch.no_grad():
        exact = gp.ExactGP(k, noise=0.05).log_marginal_likelihood(x, y)
        for _ in range(5):
            z = torch.rand(m, 2) * 3
            assert float(gp.SGPR(k, z, noise=0.05).full_data_elbo(x, y)) <= float(exact) + 1e-9


def test_bound_increases_toward_exact_as_inducing_set_grows():
    x, y = _data()
    k = gp.RBF(0.6)
    z = gp.greedy_variance(x, 40, k)
    with torch.no_grad():
        bounds = [float(gp.SGPR(k, z[:m], noise=0.1).full_data_elbo(x, y)) for m in (5, 10, 20, 40)]
    # nested inducing sets can only tighten Titsias' bound
    assert all(b1 <= b2 + 1e-9 for b1, b2 in zip(bounds, bounds[1:]))


def test_optimal_q_predictions_equal_exact_at_z_equal_x():
    x, y = _data(30)
    xs = torch.rand(6, 2) * 3
    k = gp.RBF(0.9, 1.2)
    with torch.no_grad():
        m_e, v_e = gp.ExactGP(k, noise=0.1).predict(x, y, xs)
        model = gp.SGPR(k, x, noise=0.1)
        m_s, v_s = model.predict(x, y, xs)
        ym, yv = model.predict_y(x, y, xs)
    assert torch.allclose(m_s, m_e, atol=1e-8) and torch.allclose(v_s, v_e, atol=1e-8)
    assert torch.allclose(yv, v_s + 0.1)


def test_gradients_reach_kernel_noise_and_inducing_inputs():
    x, y = _data()
    model = gp.SGPR(gp.RBF(torch.ones(2)), x[:6], noise=0.1)
    model.full_data_elbo(x, y).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()) and bool((p.grad != 0).any()), name


def test_bad_inducing_inputs_raise():
    x, y = _data()
    with pytest.raises(ValueError, match=r"inducing inputs Z must have shape \[M, D\]"):
        gp.SGPR(gp.RBF(), torch.zeros(5), noise=0.1)
    z = x[:4].clone()
    z[1, 0] = float("nan")
    with pytest.raises(ValueError, match="inducing inputs Z must be finite"):
        gp.SGPR(gp.RBF(), z, noise=0.1)


def test_forward_is_the_collapsed_bound_per_datum_and_bad_kinds_raise():
    x, y = _data()
    model = gp.SGPR(gp.RBF(torch.ones(2)), x[:6], noise=0.1)
    out = model((x, y))
    full = model.full_data_elbo(x, y)
    torch.testing.assert_close(out.bound, (full / 40).detach().expand(40), rtol=0, atol=0)
    torch.testing.assert_close(out.loss, -full / 40, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="renamed full_data_elbo"):
        assert torch.equal(model.elbo(x, y), full)
    with pytest.raises(TypeError, match="y must be a torch.Tensor; got numpy.ndarray"):
        model((x, y.numpy()))
    with pytest.raises(TypeError, match="X has dtype torch.float32"):
        model((x.float(), y))
    with pytest.raises(ValueError, match=r"lengthscale has shape \(2,\).*inducing inputs Z has D = 3"):
        gp.SGPR(gp.RBF(torch.ones(2)), torch.rand(4, 3), noise=0.1)
    with pytest.raises(TypeError, match="inducing inputs Z have dtype torch.float32 but the kernel's parameters are"):
        gp.SGPR(gp.RBF(), x[:4].float(), noise=0.1)
