"""The torch references (the kernels' specifications and CPU path) against independent oracles."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import gamma as scipy_gamma
from torch.distributions import Bernoulli, Normal

from vitorch import _logspace
from vitorch import kernels as vk
from vitorch.families import DiagNormal
from vitorch.flows import Planar
from vitorch.kernels.gamma import reference as gamma_ref
from vitorch.kernels.gaussian import reference as gauss_ref

Z = 5.2  # standard errors per stochastic assertion (tests/conftest.py)


def test_gaussian_reference_is_diag_normal_and_stopped_variant_has_the_path_gradient():
    loc = torch.randn(4, 3, requires_grad=True)
    scale = (torch.rand(4, 3) + 0.5).requires_grad_()
    torch.manual_seed(7)
    z, log_q = vk.diag_normal_rsample_and_log_prob(loc, scale, (5,))
    torch.manual_seed(7)
    z2, log_q2 = DiagNormal(loc, scale).rsample_and_log_prob((5,))
    torch.testing.assert_close(z, z2, rtol=0, atol=0)
    torch.testing.assert_close(log_q, log_q2, rtol=1e-14, atol=1e-12)
    # Stopped: same value, gradient = that of log N(z; sg(loc), sg(scale)) through z only.
    eps = (z - loc) / scale
    zs, log_qs = gauss_ref.rsample_and_log_prob_from_noise(loc, scale, eps.detach(), stop_log_q=True)
    torch.testing.assert_close(log_qs, log_q, rtol=1e-14, atol=1e-12)
    g = torch.autograd.grad(log_qs.sum(), (loc, scale))
    q_stop = DiagNormal(loc.detach(), scale.detach())
    h = torch.autograd.grad(q_stop.log_prob(loc + scale * eps.detach()).sum(), (loc, scale))
    for a, b in zip(g, h):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    # ... which is -sum_k eps / scale for loc (the formula the kernel's backward uses).
    torch.testing.assert_close(g[0], -(eps.detach() / scale.detach()).sum(0), rtol=1e-12, atol=1e-12)


def test_gaussian_shapes_and_bad_input():
    z, log_q = vk.diag_normal_rsample_and_log_prob(torch.zeros(2, 3, 4), torch.ones(2, 3, 4), (5, 6))
    assert z.shape == (5, 6, 2, 3, 4) and log_q.shape == (5, 6, 2, 3)
    with pytest.raises(ValueError, match=r"loc and scale.*\(3,\).*\(4,\)"):
        vk.diag_normal_rsample_and_log_prob(torch.zeros(3), torch.ones(4), (2,))


def test_likelihood_references_match_torch_distributions():
    x = torch.rand(6, 5).round()
    logits = 4 * torch.randn(3, 6, 5)
    torch.testing.assert_close(vk.bernoulli_log_lik(x, logits), Bernoulli(logits=logits).log_prob(x).sum(-1))
    xg, mean, scale = torch.randn(6, 5), torch.randn(3, 6, 5), torch.rand(5) + 0.1
    torch.testing.assert_close(vk.gaussian_log_lik(xg, mean, scale), Normal(mean, scale).log_prob(xg).sum(-1))
    with pytest.raises(ValueError, match=r"x \(6, 5\), logits \(3, 6, 4\)"):
        vk.bernoulli_log_lik(x, torch.zeros(3, 6, 4))


def test_logweights_reference_keeps_vitorch_convention():
    lw = torch.randn(8, 4)
    lw[:, 0] = -math.inf
    lw[2, 1] = -math.inf
    lw.requires_grad_(True)
    lse = vk.logsumexp(lw)
    assert torch.isfinite(lse).all() and lse[0].item() == -_logspace.LOG_WEIGHT_LIMIT + 0.0
    torch.testing.assert_close(lse[1:], torch.logsumexp(lw[:, 1:].detach(), 0))
    (grad,) = torch.autograd.grad(lse.sum(), lw)
    assert torch.all(grad[:, 0] == 0) and torch.isfinite(grad).all()
    w, w2 = vk.normalized_weights(lw)
    torch.testing.assert_close(w, grad)  # the weights are the log-sum-exp's gradient
    torch.testing.assert_close(w2, w * w)
    torch.testing.assert_close(w[:, 1:].sum(0), torch.ones(3))
    with pytest.raises(ValueError, match="K >= 1"):
        vk.logsumexp(torch.zeros(0, 3))


def test_mmd_op_matches_vitorch_mmd_and_rejects_bad_input():
    from vitorch.mmd import mmd

    x, y = torch.randn(2, 10, 3), torch.randn(12, 3)
    torch.testing.assert_close(vk.mmd(x, y, "imq", [1.0, 2.0]), mmd(x, y, kernel="imq", scale=[1.0, 2.0]))
    for kwargs, match in [
        ({"kernel": "cauchy"}, "kernel must be"),
        ({"scale": -1.0}, "scale must be positive"),
        ({"z_p": torch.randn(12, 4)}, "same D"),
        ({"z_p": torch.randn(1, 3)}, "at least 2 samples"),
        ({"z_p": torch.randn(3, 12, 3)}, "batch shapes do not broadcast"),
    ]:
        args = {"z_q": x, "z_p": y, **kwargs}
        with pytest.raises(ValueError, match=match):
            vk.mmd(**args)


def test_gamma_reference_draws_are_gamma_and_gradient_matches_the_kernel_formula():
    n = 3000
    alpha2 = 2e-7  # two-sided level matching Z = 5.2
    dkwm = math.sqrt(math.log(2 / alpha2) / (2 * n))
    alpha = torch.full((n,), 0.4, requires_grad=True)
    log_x, eps, props = vk.log_standard_gamma(alpha, 2)
    x = log_x.detach().exp().sort().values
    ecdf = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert (ecdf - torch.as_tensor(scipy_gamma(0.4).cdf(x.numpy()))).abs().max().item() < dkwm
    assert bool((props >= 1).all())
    # The pathwise derivative the Triton backward evaluates in closed form.
    a = torch.tensor([0.01, 0.5, 1.0, 7.0, 1e3], requires_grad=True)
    e = torch.tensor([-0.5, 0.3, 1.2, -1.0, 2.0])
    log_u = torch.log(torch.rand(3, 5))
    lx = gamma_ref.log_standard_gamma_from_noise(a, 2, e, log_u)
    (g,) = torch.autograd.grad(lx.sum(), a)
    ad = a.detach()
    d = ad + 2 - 1 / 3
    c = 1 / torch.sqrt(9 * d)
    expected = 1 / d - 1.5 * c * e / (d * (1 + c * e)) - (log_u[:2] / (ad + torch.arange(2.0)[:, None]) ** 2).sum(0)
    torch.testing.assert_close(g, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        gamma_ref.log_standard_gamma_from_noise(a, 0, e, log_u)[2:], gamma_ref.log_h(e, a)[2:], rtol=0, atol=0
    )
    with pytest.raises(ValueError, match="boost"):
        vk.log_standard_gamma(a, -1)


def test_planar_reference_matches_chained_vitorch_planar_layers():
    layers = [Planar(4) for _ in range(3)]
    x = torch.randn(6, 4)
    y, ladj = x, torch.zeros(6)
    for t in layers:
        y, l = t.call_and_ladj(y)
        ladj = ladj + l
    u, w, b = (torch.stack(p) for p in zip(*(t._uwb(None) for t in layers)))
    y2, ladj2 = vk.planar_stack(x, u, w, b.reshape(-1))
    torch.testing.assert_close(y2, y)
    torch.testing.assert_close(ladj2, ladj)
    with pytest.raises(ValueError, match=r"u \(3, 5\)"):
        vk.planar_stack(x, torch.zeros(3, 5), w, b.reshape(-1))
