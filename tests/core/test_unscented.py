"""Unscented sigma points and the closed-form 2-Wasserstein distance.

Oracles: the linear-Gaussian VAE (``tests/core/linvae.py``), whose log-joint is quadratic in z,
so the unscented ELBO must equal the closed-form ELBO and its gradient the closed-form
gradient; Gaussian moments; scipy's matrix square root for W2.  Everything here is
deterministic (no tolerance from sampling).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.linalg
import torch
from torch.distributions import Categorical, Independent, MultivariateNormal, Normal

import vitorch as vt
from vitorch import unscented as U
from vitorch.families.wasserstein import squared_wasserstein2

from core import linvae as lv

O, E = vt.objectives, vt.estimators
B, D, OUT = 3, 2, 4


def _model(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, OUT, generator=g)
    w = torch.randn(OUT, D, generator=g)
    b = torch.randn(OUT, generator=g)
    return x, w, b, 0.7


def _tril(g, n=B):
    a = torch.randn(n, D, D, generator=g)
    return torch.tril(a, -1) * 0.4 + torch.diag_embed(torch.rand(n, D, generator=g) + 0.3)


FAMILIES = {
    "diag": lambda m, g: vt.DiagNormal(m, torch.rand(B, D, generator=g) + 0.3),
    "full": lambda m, g: vt.FullRankNormal(m, _tril(g)),
    "lowrank": lambda m, g: vt.LowRankNormal(
        m, 0.5 * torch.randn(B, D, 1, generator=g), torch.rand(B, D, generator=g) + 0.2
    ),
    "torch_mvn": lambda m, g: MultivariateNormal(m, scale_tril=_tril(g)),
    "torch_independent": lambda m, g: Independent(Normal(m, torch.rand(B, D, generator=g) + 0.3), 1),
}


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("kappa", [1e-3, 1.0, -1.5])
def test_sigma_points_match_the_mean_and_covariance(family, kappa):
    g = torch.Generator().manual_seed(1)
    q = FAMILIES[family](torch.randn(B, D, generator=g), g)
    z, w = U.sigma_points(q, kappa)
    assert z.shape == (2 * D + 1, B, D) and w.shape == (2 * D + 1, B)
    assert torch.allclose(w.sum(0), torch.ones(B), atol=1e-14)
    assert torch.allclose(w[0], torch.full((B,), kappa / (D + kappa)), atol=1e-14)
    mean = (w.unsqueeze(-1) * z).sum(0)
    centred = z - q.mean
    cov = (w[..., None, None] * centred.unsqueeze(-1) * centred.unsqueeze(-2)).sum(0)
    assert torch.allclose(mean, q.mean, atol=1e-12)
    want = torch.diag_embed(q.variance) if isinstance(q, Independent) else q.covariance_matrix
    assert torch.allclose(cov, want, atol=1e-12)


def _params(family, seed=2):
    """Guide parameters (leaves) and a builder of q from them."""
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, D, generator=g).requires_grad_(True)
    if family == "diag":
        log_s = (0.3 * torch.randn(B, D, generator=g)).requires_grad_(True)
        return [m, log_s], lambda: vt.DiagNormal(m, log_s.exp()), lambda: torch.diag_embed(log_s.exp().pow(2))
    if family == "full":
        tril = _tril(g).requires_grad_(True)
        return [m, tril], lambda: vt.FullRankNormal(m, tril), lambda: torch.tril(tril) @ torch.tril(tril).mT
    f = (0.5 * torch.randn(B, D, 1, generator=g)).requires_grad_(True)
    d = (torch.rand(B, D, generator=g) + 0.2).requires_grad_(True)
    return [m, f, d], lambda: vt.LowRankNormal(m, f, d), lambda: f @ f.mT + torch.diag_embed(d)


@pytest.mark.parametrize("family", ["diag", "full", "lowrank"])
def test_unscented_elbo_and_gradient_are_exact_for_a_linear_gaussian_decoder(family):
    x, w0, b0, s0 = _model()
    guide, make_q, make_cov = _params(family)
    w, b = w0.clone().requires_grad_(True), b0.clone().requires_grad_(True)
    s = torch.tensor(s0, requires_grad=True)
    out = vt.loss(lv.log_joint(x, w, b, s), make_q(), estimator=E.unscented())
    ref = lv.exact_elbo(x, w, b, s, guide[0], make_cov())
    assert out.log_w.shape == (2 * D + 1, B) and out.weights.shape == (2 * D + 1, B)
    assert torch.allclose(out.bound, ref.detach(), atol=1e-10, rtol=0)
    leaves = [*guide, w, b, s]
    got = torch.autograd.grad(out.loss, leaves)
    want = torch.autograd.grad(-ref.mean(), leaves)
    for name, a, c in zip(["guide"] * len(guide) + ["W", "b", "s"], got, want):
        assert torch.allclose(a, c, atol=1e-10, rtol=0), name


def test_unscented_elbo_at_the_exact_posterior_is_the_exact_evidence():
    x, w, b, s = _model()
    mean, cov = lv.posterior(x, w, b, s)
    q = vt.FullRankNormal(mean, torch.linalg.cholesky(cov).expand(B, D, D))
    out = vt.loss(lv.log_joint(x, w, b, s), q, estimator=E.unscented())
    assert torch.allclose(out.bound, lv.log_evidence(x, w, b, s), atol=1e-10, rtol=0)


def test_kappa_sets_the_fourth_moment():
    """1-D: the rule reproduces E[z^4] = 3 sigma^4 only with Julier & Uhlmann's kappa = 3 - D;
    the default (the paper's 1e-3) gives (1 + kappa) sigma^4.  Quadratics are exact for both."""
    q = vt.DiagNormal(torch.zeros(1), torch.full((1,), 1.3))
    fourth = lambda z: z.pow(4).sum(-1)  # noqa: E731
    assert torch.allclose(U.expect(fourth, q, kappa=2.0), torch.tensor(3 * 1.3**4), atol=1e-12)
    assert torch.allclose(U.expect(fourth, q), torch.tensor((1 + 1e-3) * 1.3**4), atol=1e-12)
    for kappa in (2.0, 1e-3):
        assert torch.allclose(U.expect(lambda z: (z - 0.2).pow(2).sum(-1), q, kappa), torch.tensor(1.3**2 + 0.04))


def test_negative_centre_weight_is_exact_for_the_elbo():
    x, w, b, s = _model()
    q = vt.DiagNormal(torch.zeros(B, D), torch.ones(B, D))
    out = vt.loss(lv.log_joint(x, w, b, s), q, estimator=E.unscented(kappa=-1.5))
    ref = lv.exact_elbo(x, w, b, s, torch.zeros(B, D), torch.eye(D))
    assert torch.allclose(out.bound, ref, atol=1e-10)


def test_unscented_refuses_what_it_cannot_place():
    cat = Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError, match="not one"):
        vt.check(cat, 1, O.elbo, E.unscented())
    q = vt.DiagNormal(torch.zeros(2, D), torch.ones(2, D))
    with pytest.raises(ValueError) as err:
        vt.check(q, 3, O.vis(), E.unscented(kappa=-D))
    text = str(err.value)
    assert "leave num_particles at 1" in text and "kappa must exceed" in text and "use elbo" in text
    for objective in (O.iwae, O.renyi(0.5), O.cubo(2), O.ciwae(0.5)):
        with pytest.raises(ValueError, match="log-space mean"):
            vt.check(q, 1, objective, E.unscented())
    with pytest.raises(ValueError, match="finite"):
        E.unscented(kappa=math.nan)
    with pytest.raises(ValueError, match="not a Gaussian"):
        U.sigma_points(cat)
    with pytest.raises(ValueError, match="kappa"):
        U.sigma_points(q, kappa=-3.0)
    with pytest.raises(ValueError, match="to shape"):
        U.expect(lambda z: z, q)


# ---------------------------------------------------------------- 2-Wasserstein


def _w2_scipy(m1, c1, m2, c2) -> float:
    r2 = scipy.linalg.sqrtm(c2)
    cross = scipy.linalg.sqrtm(r2 @ c1 @ r2)
    return float(np.sum((m1 - m2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.real(np.trace(cross)))


@pytest.mark.parametrize("pair", ["full-full", "lowrank-full", "diag-mvn", "full-none", "lowrank-none", "diag-diag"])
def test_w2_matches_scipy(pair):
    g = torch.Generator().manual_seed(3)
    m = torch.randn(B, D, generator=g)
    make = {
        "full": lambda: vt.FullRankNormal(torch.randn(B, D, generator=g), _tril(g)),
        "lowrank": lambda: vt.LowRankNormal(
            torch.randn(B, D, generator=g), torch.randn(B, D, 1, generator=g), torch.rand(B, D, generator=g) + 0.1
        ),
        "diag": lambda: vt.DiagNormal(m, torch.rand(B, D, generator=g) + 0.2),
        "mvn": lambda: MultivariateNormal(torch.randn(B, D, generator=g), scale_tril=_tril(g)),
        "none": lambda: None,
    }
    a, c = pair.split("-")
    q, p = make[a](), make[c]()
    got = squared_wasserstein2(q, p)
    for i in range(B):
        mp, cp = (np.zeros(D), np.eye(D)) if p is None else (p.mean[i].numpy(), p.covariance_matrix[i].numpy())
        want = _w2_scipy(q.mean[i].numpy(), q.covariance_matrix[i].numpy(), mp, cp)
        assert abs(got[i].item() - want) < 1e-9, (pair, i, got[i].item(), want)


def test_w2_properties_and_gradient():
    g = torch.Generator().manual_seed(4)
    q = vt.FullRankNormal(torch.randn(B, D, generator=g), _tril(g))
    p = vt.FullRankNormal(torch.randn(B, D, generator=g), _tril(g))
    assert torch.allclose(squared_wasserstein2(q, p), squared_wasserstein2(p, q), atol=1e-12)
    assert squared_wasserstein2(q, q).abs().max() < 1e-10
    std = vt.DiagNormal(torch.zeros(D), torch.ones(D))
    assert torch.allclose(squared_wasserstein2(q), squared_wasserstein2(q, std), atol=1e-12)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2.
    one = squared_wasserstein2(vt.DiagNormal(torch.tensor([0.5]), torch.tensor([2.0])))
    assert torch.allclose(one, torch.tensor(0.25 + 1.0))
    # At an isotropic full-rank q (repeated singular values) the gradient is finite and analytic:
    # W2^2(N(0, s^2 I), N(0, I)) = D (s - 1)^2.
    s = torch.tensor(1.7, requires_grad=True)
    value = squared_wasserstein2(vt.FullRankNormal(torch.zeros(D), s * torch.eye(D)))
    (grad,) = torch.autograd.grad(value, [s])
    assert torch.allclose(value, torch.tensor(D * 0.7**2)) and torch.allclose(grad, torch.tensor(2 * D * 0.7))
    tril = _tril(g, 1)[0].requires_grad_(True)
    loc = torch.randn(D, generator=g).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, t: squared_wasserstein2(vt.FullRankNormal(a, torch.tril(t)), p), (loc, tril)
    )


def test_w2_refuses_non_gaussians_and_event_mismatch():
    q = vt.DiagNormal(torch.zeros(D), torch.ones(D))
    with pytest.raises(ValueError, match="Gaussian family"):
        squared_wasserstein2(vt.Gamma(torch.ones(D), torch.ones(D)))
    with pytest.raises(ValueError, match="event shapes differ"):
        squared_wasserstein2(q, vt.DiagNormal(torch.zeros(3), torch.ones(3)))
