"""Silent gradients: the closed-form expected log-likelihood of a linear-Gaussian decoder.

Oracles: the dense-matrix ELBO of the linear-Gaussian VAE (``tests/core/linvae.py``) and its
autograd gradient; the exact evidence at the exact posterior; exact enumeration for the
discrete guides; the mean of reparameterization gradients (within ``Z = 5.2`` standard
errors from the same draws; two-sided p ~ 2e-7, see conftest).
"""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, MultivariateNormal, Normal, OneHotCategorical

import vitorch as vt
from vitorch import quadrature, silent, unscented

from conftest import Z
from core import linvae as lv

E = vt.estimators
B, D, OUT = 3, 2, 4


def _decoder(seed=0, learn_scale=False):
    torch.manual_seed(seed)
    dec = silent.LinearGaussianDecoder(D, OUT, learn_scale=learn_scale, init_scale=0.7)
    x = torch.randn(B, OUT)
    return dec, x


def _guide(family, seed=1):
    g = torch.Generator().manual_seed(seed)
    m = torch.randn(B, D, generator=g).requires_grad_(True)
    if family == "diag":
        log_s = (0.3 * torch.randn(B, D, generator=g)).requires_grad_(True)
        return [m, log_s], lambda: vt.DiagNormal(m, log_s.exp()), lambda: torch.diag_embed(log_s.exp().pow(2))
    if family == "torch_independent":
        log_s = (0.3 * torch.randn(B, D, generator=g)).requires_grad_(True)
        return (
            [m, log_s],
            lambda: Independent(Normal(m, log_s.exp()), 1),
            lambda: torch.diag_embed(log_s.exp().pow(2)),
        )
    if family in ("full", "torch_mvn"):
        t = (torch.tril(0.4 * torch.randn(B, D, D, generator=g), -1) + torch.eye(D)).requires_grad_(True)
        make = vt.FullRankNormal if family == "full" else lambda mu, tril: MultivariateNormal(mu, scale_tril=tril)
        return [m, t], lambda: make(m, torch.tril(t)), lambda: torch.tril(t) @ torch.tril(t).mT
    f = (0.5 * torch.randn(B, D, 1, generator=g)).requires_grad_(True)
    d = (torch.rand(B, D, generator=g) + 0.2).requires_grad_(True)
    return [m, f, d], lambda: vt.LowRankNormal(m, f, d), lambda: f @ f.mT + torch.diag_embed(d)


GAUSSIANS = ["diag", "full", "lowrank", "torch_mvn", "torch_independent"]


@pytest.mark.parametrize("family", GAUSSIANS)
def test_silent_elbo_and_gradient_equal_the_closed_form(family):
    dec, x = _decoder()
    guide, make_q, make_cov = _guide(family)
    out = silent.loss(x, make_q(), dec)
    ref = lv.exact_elbo(x, dec.linear.weight, dec.linear.bias, 0.7, guide[0], make_cov())
    assert torch.allclose(out.bound, ref.detach(), atol=1e-10, rtol=0)
    leaves = [*guide, *dec.parameters()]
    got = torch.autograd.grad(out.loss, leaves)
    want = torch.autograd.grad(-ref.mean(), leaves)
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-10, rtol=0)


def test_per_output_scales_match_the_sampled_log_likelihood():
    """With a learned scale per output, the closed form and its gradients equal the unscented
    expectation of the decoder's own log_prob (exact for a quadratic), a route through particles."""
    dec, x = _decoder(learn_scale=True)
    with torch.no_grad():
        dec.log_scale.copy_(torch.linspace(-0.5, 0.4, OUT))
    guide, make_q, _ = _guide("full")
    analytic = dec.expected_log_prob(make_q(), x)
    via_sigma_points = unscented.expect(lambda z: dec.log_prob(z, x), make_q())
    assert torch.allclose(analytic, via_sigma_points, atol=1e-10)
    leaves = [*guide, *dec.parameters()]
    got = torch.autograd.grad(analytic.sum(), leaves)
    want = torch.autograd.grad(via_sigma_points.sum(), leaves)
    for a, c in zip(got, want):
        assert torch.allclose(a, c, atol=1e-10)


def test_silent_elbo_at_the_exact_posterior_is_the_exact_evidence():
    dec, x = _decoder()
    w, b, s = dec.linear.weight.detach(), dec.linear.bias.detach(), 0.7
    mean, cov = lv.posterior(x, w, b, s)
    q = vt.FullRankNormal(mean, torch.linalg.cholesky(cov).expand(B, D, D))
    out = silent.loss(x, q, dec)
    assert torch.allclose(out.bound, lv.log_evidence(x, w, b, s), atol=1e-10, rtol=0)


@pytest.mark.parametrize(
    "make",
    [
        lambda t: Independent(Bernoulli(logits=t[..., :D]), 1),
        lambda t: OneHotCategorical(logits=t[..., :D]),
        lambda t: Independent(OneHotCategorical(logits=t[..., :4].reshape(*t.shape[:-1], 2, 2)), 1),
    ],
    ids=["bernoulli", "onehot", "two_onehots"],
)
def test_discrete_guides_match_exact_enumeration(make):
    """The moments route (mean, covariance) against summing the decoder's log-likelihood over
    the whole support, values and gradients."""
    t = torch.randn(B, 4).requires_grad_(True)
    q = make(t)
    latent = q.event_shape.numel()
    torch.manual_seed(5)
    dec = silent.LinearGaussianDecoder(latent, OUT, init_scale=0.8)
    x = torch.randn(B, OUT)
    analytic = dec.expected_log_prob(q, x)
    exact = quadrature.expect(lambda z: dec.log_prob(z.flatten(2), x), q)
    assert torch.allclose(analytic, exact, atol=1e-10)
    leaves = [t, *dec.parameters()]
    got = torch.autograd.grad(analytic.sum(), leaves, retain_graph=True)
    for a, c in zip(got, torch.autograd.grad(exact.sum(), leaves)):
        assert torch.allclose(a, c, atol=1e-10)


def test_silent_loss_with_a_discrete_prior():
    t = torch.randn(B, 3)
    q = OneHotCategorical(logits=t)
    dec = silent.LinearGaussianDecoder(3, OUT)
    x = torch.randn(B, OUT)
    prior = OneHotCategorical(logits=torch.zeros(3))
    out = silent.loss(x, q, dec, prior)
    ref = vt.loss(lambda z: dec.log_prob(z, x) + prior.log_prob(z), q, estimator=E.enumerate())
    assert torch.allclose(out.bound, ref.bound, atol=1e-10)


def test_the_gradient_has_zero_variance_and_is_the_mean_of_reparameterization():
    """Silent gradients do not change with the seed; reparameterization's do, and their mean over
    R vectorized replicates equals the silent gradient within Z standard errors."""
    R = 4000
    dec, x0 = _decoder()
    m0, log_s0 = torch.randn(D), 0.3 * torch.randn(D)

    def grads(use_silent, seed, reps):
        torch.manual_seed(seed)
        m = m0.expand(reps, D).clone().requires_grad_(True)
        log_s = log_s0.expand(reps, D).clone().requires_grad_(True)
        q, x = vt.DiagNormal(m, log_s.exp()), x0[0].expand(reps, OUT)
        if use_silent:
            out = silent.loss(x, q, dec)
        else:
            out = vt.loss(lambda z: dec.log_prob(z, x) - 0.5 * (z.pow(2).sum(-1) + D * lv.LOG_2PI), q)
        return -reps * torch.cat(torch.autograd.grad(out.loss, [m, log_s]), -1)

    silent_draws = [grads(True, seed, 1)[0] for seed in range(5)]
    assert all(torch.equal(g, silent_draws[0]) for g in silent_draws)
    reparam_draws = [grads(False, seed, 1)[0] for seed in range(5)]
    assert not all(torch.equal(g, reparam_draws[0]) for g in reparam_draws)
    draws = grads(False, 123, R)
    mean, se = draws.mean(0), draws.std(0) / R**0.5
    assert ((mean - silent_draws[0]).abs() <= Z * se).all(), (mean, silent_draws[0], se)


# ---------------------------------------------------------------- annealing and mixing


def test_anneal_schedule():
    assert silent.anneal(0, steps=100) == 1.0
    assert silent.anneal(50, steps=100) == 0.5
    assert silent.anneal(100, steps=100) == 0.0 and silent.anneal(10_000, steps=100) == 0.0
    assert silent.anneal(10, steps=100, hold=20) == 1.0
    assert silent.anneal(70, steps=100, hold=20, end=0.2) == pytest.approx(0.6)


@pytest.mark.parametrize("lam", [0.0, 0.3, 1.0])
def test_split_mixes_the_encoder_gradient_and_keeps_each_decoder_whole(lam):
    """Encoder gradient = lam * g_silent + (1 - lam) * g_stochastic; each decoder's own gradient
    is what its loss alone would give."""
    torch.manual_seed(0)
    encoder = torch.nn.Linear(OUT, 2 * D)
    lin = silent.LinearGaussianDecoder(D, OUT)
    nonlin = torch.nn.Sequential(torch.nn.Linear(D, 8), torch.nn.Tanh(), torch.nn.Linear(8, OUT))
    x = torch.randn(B, OUT)

    def guide():
        h = encoder(x)
        return vt.DiagNormal(h[:, :D], torch.nn.functional.softplus(h[:, D:]))

    def stochastic(q):
        torch.manual_seed(9)  # the same draw in every call

        def lj(z):
            return Normal(nonlin(z), 1.0).log_prob(x).sum(-1) - 0.5 * z.pow(2).sum(-1)

        return vt.loss(lj, q)

    params = [*encoder.parameters()]
    g_s = torch.autograd.grad(silent.loss(x, guide(), lin).loss, params)
    g_n = torch.autograd.grad(stochastic(guide()).loss, params)
    q_s, q_n = silent.split(guide(), lam)
    out = silent.combine(silent.loss(x, q_s, lin), stochastic(q_n))
    mixed = torch.autograd.grad(out.loss, params + [*lin.parameters(), *nonlin.parameters()], allow_unused=True)
    for got, a, b in zip(mixed, g_s, g_n):
        assert torch.allclose(got, lam * a + (1 - lam) * b, atol=1e-12)
    whole_lin = torch.autograd.grad(silent.loss(x, guide(), lin).loss, [*lin.parameters()])
    whole_nonlin = torch.autograd.grad(stochastic(guide()).loss, [*nonlin.parameters()])
    for got, want in zip(mixed[len(params) :], [*whole_lin, *whole_nonlin]):
        assert torch.allclose(got, want, atol=1e-12)
    assert torch.equal(out.bound, stochastic(guide()).bound)


def test_split_keeps_values_and_rebuilds_discrete_guides():
    logits = torch.randn(B, 3, requires_grad=True)
    a, b = silent.split(Categorical(logits=logits), 0.25)
    assert torch.allclose(a.probs, torch.softmax(logits, -1)) and torch.allclose(b.logits, a.logits)
    (g,) = torch.autograd.grad(a.logits.sum() + b.logits.sum(), [logits])
    (ref,) = torch.autograd.grad(Categorical(logits=logits).logits.sum(), [logits])
    assert torch.allclose(g, ref, atol=1e-12)


def test_bad_input():
    dec, x = _decoder()
    q = vt.DiagNormal(torch.zeros(B, D), torch.ones(B, D))
    with pytest.raises(ValueError, match="columns"):
        silent.expected_log_lik(x, q, torch.ones(OUT, D + 1))
    with pytest.raises(ValueError, match=r"O = x.shape\[-1\]"):
        silent.expected_log_lik(x, q, torch.ones(OUT + 1, D))
    with pytest.raises(ValueError, match="scale must be positive"):
        silent.expected_log_lik(x, q, torch.ones(OUT, D), scale=0.0)
    with pytest.raises(TypeError, match="no closed-form moments"):
        silent.expected_log_lik(x, vt.Gamma(torch.ones(B, D), torch.ones(B, D)), torch.ones(OUT, D))
    with pytest.raises(ValueError, match="needs an explicit prior"):
        silent.loss(x, OneHotCategorical(logits=torch.zeros(B, D)), dec)
    with pytest.raises(ValueError, match="steps >= 1"):
        silent.anneal(0, steps=0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        silent.anneal(0, steps=10, start=1.5)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        silent.split(q, 1.2)
    with pytest.raises(TypeError, match="cannot rebuild"):
        silent.split(vt.Gamma(torch.ones(D), torch.ones(D)), 0.5)
    with pytest.raises(ValueError, match="init_scale"):
        silent.LinearGaussianDecoder(D, OUT, init_scale=0.0)
