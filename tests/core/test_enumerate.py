"""Exact enumeration against the exact evidence, hand-derived gradients and the score estimators.

The oracle model is a Gaussian mixture with a discrete latent: ``z ~ Categorical(softmax(a))``,
``x | z ~ N(mu_z, sigma^2)``; its evidence ``log p(x) = logsumexp_z (log pi_z + log N(x; mu_z,
sigma^2))`` and posterior are exact.  Stochastic assertions compare means with the exact
enumeration gradient within ``Z`` standard errors from the same draws (``Z = 5.2``: two-sided
p ~ 2e-7 each, see conftest).
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch.distributions import Bernoulli, Categorical, Independent, Normal, OneHotCategorical

import vitorch as vt
from vitorch import quadrature

from conftest import Z

O, E = vt.objectives, vt.estimators
C = 3
A0 = torch.tensor([0.2, -0.4, 0.1], dtype=torch.float64)  # prior logits (model)
MU0 = torch.tensor([-1.5, 0.3, 2.0], dtype=torch.float64)  # component means (model)
SIGMA = 0.8
X0 = torch.tensor([0.9, -1.1], dtype=torch.float64)  # two data
L0 = torch.tensor([[0.3, -0.2, 0.5], [-0.6, 0.1, 0.0]], dtype=torch.float64)  # guide logits


def log_joint(x, a, mu):
    """``z [N, *batch] -> log p(x, z) [N, *batch]`` for integer z."""

    def f(z):
        return torch.log_softmax(a, -1)[z] + Normal(mu[z], SIGMA).log_prob(x)

    return f


def log_evidence(x, a, mu):
    return torch.logsumexp(torch.log_softmax(a, -1) + Normal(mu, SIGMA).log_prob(x.unsqueeze(-1)), -1)


def log_posterior(x, a, mu):
    joint = torch.log_softmax(a, -1) + Normal(mu, SIGMA).log_prob(x.unsqueeze(-1))
    return joint - torch.logsumexp(joint, -1, keepdim=True)


def _loss(objective, estimator, logits, a=A0, mu=MU0, x=X0, K=1):
    q = Categorical(logits=logits)
    return vt.loss(log_joint(x.expand(logits.shape[:-1]), a, mu), q, K, objective, estimator)


def test_enumerated_elbo_at_the_exact_posterior_is_the_exact_evidence():
    logits = log_posterior(X0, A0, MU0)
    out = _loss(O.elbo, E.enumerate(), logits)
    assert torch.allclose(out.bound, log_evidence(X0, A0, MU0), atol=1e-12, rtol=0)
    assert out.log_w.shape == (C, 2) and out.weights.shape == (C, 2)
    assert torch.allclose(out.weights.sum(0), torch.ones(2), atol=1e-14)


def test_weighted_bounds_are_their_defining_expectations():
    """Away from the posterior: ELBO < Rényi(0.5) < IWAE = log p(x) < CUBO, each equal to its
    expectation under q summed by hand."""
    lz = log_evidence(X0, A0, MU0)
    q = Categorical(logits=L0)
    z = torch.arange(C).reshape(C, 1).expand(C, 2)
    log_w = log_joint(X0, A0, MU0)(z) - q.log_prob(z)
    pi = q.log_prob(z).exp()
    b = {o.name: _loss(o, E.enumerate(), L0).bound for o in (O.elbo, O.iwae, O.renyi(0.5), O.cubo(2), O.ciwae(0.3))}
    assert torch.allclose(b["elbo"], (pi * log_w).sum(0), atol=1e-12)
    assert torch.allclose(b["iwae"], lz, atol=1e-12)
    assert torch.allclose(b["renyi(alpha=0.5)"], 2 * torch.log((pi * (0.5 * log_w).exp()).sum(0)), atol=1e-12)
    assert torch.allclose(b["cubo(n=2)"], 0.5 * torch.log((pi * (2 * log_w).exp()).sum(0)), atol=1e-12)
    assert torch.allclose(b["ciwae(beta=0.3)"], 0.3 * b["elbo"] + 0.7 * lz, atol=1e-12)
    assert (b["elbo"] < b["renyi(alpha=0.5)"] - 1e-3).all() and (b["renyi(alpha=0.5)"] < lz - 1e-3).all()
    assert (b["cubo(n=2)"] > lz + 1e-3).all()


def test_enumerated_gradient_is_the_analytic_gradient():
    """ELBO = sum_z q_z f_z with f_z = log p(x, z) - log q_z.  By hand: d/dl_j = q_j (f_j - ELBO)
    (the log q term's gradient sums to zero), d/dmu_z = sum_data q_z (x - mu_z) / sigma^2,
    d/da_j = sum_data (q_j - pi_j)."""
    logits = L0.clone().requires_grad_(True)
    a, mu = A0.clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    out = _loss(O.elbo, E.enumerate(), logits, a, mu)
    g_l, g_a, g_mu = torch.autograd.grad(-2 * out.loss, [logits, a, mu])  # loss = -mean over 2 data
    q = torch.softmax(L0, -1)
    f = torch.log_softmax(A0, -1) + Normal(MU0, SIGMA).log_prob(X0.unsqueeze(-1)) - torch.log_softmax(L0, -1)
    elbo = (q * f).sum(-1, keepdim=True)
    assert torch.allclose(g_l, q * (f - elbo), atol=1e-12, rtol=0)
    assert torch.allclose(g_mu, (q * (X0.unsqueeze(-1) - MU0) / SIGMA**2).sum(0), atol=1e-12, rtol=0)
    assert torch.allclose(g_a, (q - torch.softmax(A0, -1)).sum(0), atol=1e-12, rtol=0)


def test_weighted_iwae_gradient_is_maximum_likelihood_and_leaves_the_guide():
    logits = L0.clone().requires_grad_(True)
    a, mu = A0.clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    out = _loss(O.iwae, E.enumerate(), logits, a, mu)
    g_l, g_a, g_mu = torch.autograd.grad(out.loss, [logits, a, mu])
    a2, mu2 = A0.clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    ref = torch.autograd.grad(-log_evidence(X0, a2, mu2).mean(), [a2, mu2])
    assert g_l.abs().max() < 1e-12
    assert torch.allclose(g_a, ref[0], atol=1e-12) and torch.allclose(g_mu, ref[1], atol=1e-12)


def test_split_objective_gives_each_group_its_bound():
    """VIS under enumeration: the model ascends log p(x); the guide descends log E_q[w^2]."""
    logits = L0.clone().requires_grad_(True)
    a, mu = A0.clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    out = _loss(O.vis(), E.enumerate(), logits, a, mu)
    g_l, g_a, g_mu = torch.autograd.grad(out.loss, [logits, a, mu])
    assert torch.allclose(out.bound, log_evidence(X0, A0, MU0), atol=1e-12)
    a2, mu2 = A0.clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    ref_a, ref_mu = torch.autograd.grad(-log_evidence(X0, a2, mu2).mean(), [a2, mu2])
    l2 = L0.clone().requires_grad_(True)
    z = torch.arange(C).reshape(C, 1).expand(C, 2)
    q = Categorical(logits=l2)
    log_w = log_joint(X0, A0, MU0)(z) - q.log_prob(z)
    chi2 = torch.logsumexp(q.log_prob(z) + 2 * log_w, 0)
    (ref_l,) = torch.autograd.grad(chi2.mean(), [l2])
    assert torch.allclose(g_a, ref_a, atol=1e-12) and torch.allclose(g_mu, ref_mu, atol=1e-12)
    assert torch.allclose(g_l, ref_l, atol=1e-12)


@pytest.mark.parametrize(
    ("make", "size"),
    [
        (lambda t: Independent(Bernoulli(logits=t[..., :3]), 1), 8),
        (lambda t: OneHotCategorical(logits=t[..., :4]), 4),
        (lambda t: Independent(Categorical(logits=t[..., :6].reshape(*t.shape[:-1], 2, 3)), 1), 9),
        (lambda t: Independent(Independent(Bernoulli(logits=t[..., :4].reshape(*t.shape[:-1], 2, 2)), 1), 1), 16),
    ],
    ids=["bernoulli3", "onehot4", "categorical2x3", "nested_bernoulli2x2"],
)
def test_products_enumerate_their_whole_support(make, size):
    """``size`` distinct points whose q-probabilities (all positive) sum to one: the whole support."""
    q = make(torch.randn(2, 6))
    z = quadrature.support(q)
    assert z.shape == (size, 2, *q.event_shape)
    assert torch.allclose(q.log_prob(z).exp().sum(0), torch.ones(2), atol=1e-12)
    assert len({tuple(v.flatten().tolist()) for v in z[:, 0]}) == size
    assert torch.equal(z[:, 0], z[:, 1])
    weights = torch.arange(1.0, z[0, 0].numel() + 1)

    def f(v):
        return torch.sin(v.double().flatten(2) @ weights)

    expected = (q.log_prob(z).exp() * f(z)).sum(0)
    assert torch.allclose(quadrature.expect(f, q), expected, atol=1e-12)
    out = vt.loss(f, q, estimator=E.enumerate())  # f as a log-joint: the ELBO is E_q[f - log q]
    assert torch.allclose(out.bound, quadrature.expect(lambda v: f(v) - q.log_prob(v), q), atol=1e-12)


def test_bernoulli_support_matches_itertools():
    q = Independent(Bernoulli(logits=torch.zeros(3)), 1)
    z = quadrature.support(q)
    assert sorted(map(tuple, z.tolist())) == sorted(itertools.product([0.0, 1.0], repeat=3))


def test_a_class_of_zero_probability_is_skipped_without_nan():
    logits = torch.tensor([[0.3, -math.inf, 0.5]], requires_grad=True)
    out = _loss(O.elbo, E.enumerate(), logits, x=X0[:1])
    out.loss.backward()
    keep = torch.tensor([0, 2])
    q = torch.softmax(logits.detach()[0, keep], -1)
    f = (torch.log_softmax(A0, -1) + Normal(MU0, SIGMA).log_prob(X0[0]))[keep] - q.log()
    assert torch.allclose(out.bound, (q * f).sum().reshape(1), atol=1e-12)
    assert torch.isfinite(logits.grad).all() and logits.grad[0, 1] == 0
    assert torch.isfinite(_loss(O.iwae, E.enumerate(), logits.detach(), x=X0[:1]).bound).all()


# ---------------------------------------------------------------- weighted objectives

WEIGHTED = [O.elbo, O.iwae, O.ciwae(0.3), O.renyi(0.5), O.renyi(2.0), O.cubo(2), O.vis()]


@pytest.mark.parametrize("objective", WEIGHTED, ids=str)
def test_uniform_weights_give_the_unweighted_bound(objective):
    log_w = torch.randn(5, 3)
    uniform = torch.full((5, 3), 0.2)
    assert torch.allclose(objective.bound(log_w, uniform), objective(log_w), atol=1e-12)
    assert torch.allclose(objective.guide.bound(log_w, uniform), objective.guide(log_w), atol=1e-12)


@pytest.mark.parametrize("objective", WEIGHTED, ids=str)
def test_weighted_bounds_gradcheck(objective):
    log_w = torch.randn(4, 2, requires_grad=True)
    raw = torch.rand(4, 2, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, r: objective.guide.bound(a, r / r.sum(0)), (log_w, raw + 0.1))


@pytest.mark.parametrize("objective", WEIGHTED, ids=str)
def test_weighted_bounds_stay_finite_in_half_precision_and_at_zero_weights(objective):
    log_w = torch.tensor([[1e4, -math.inf], [-3.0, -math.inf], [math.inf, -math.inf]], requires_grad=True)
    weights = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.0, 0.0]])
    value = objective.bound(log_w, weights)
    value.sum().backward()
    assert torch.isfinite(value).all() and torch.isfinite(log_w.grad).all()
    assert log_w.grad[2].abs().max() == 0  # a particle of weight zero passes nothing
    half = objective.bound(log_w.detach().half(), weights.half())
    assert half.dtype == torch.float16 and torch.isfinite(half).all()


def test_a_subclass_with_a_weighted_form_is_accepted():
    class Tempered(O.Objective):
        name, takes_weights, particlewise = "tempered_elbo", True, True

        def __call__(self, log_w, weights=None):
            w = torch.full_like(log_w, 1 / log_w.shape[0]) if weights is None else weights
            return 0.5 * (w * log_w).sum(0)

    out = _loss(Tempered(), E.enumerate(), L0)
    assert torch.allclose(out.bound, 0.5 * _loss(O.elbo, E.enumerate(), L0).bound, atol=1e-12)


# ---------------------------------------------------------------- score estimators agree in expectation


def _draws(objective, estimator, K, R):
    """``[R, C + C]`` gradient draws (guide logits, model means) from R vectorized replicates."""
    logits = L0[0].expand(R, C).clone().requires_grad_(True)
    mu = MU0.expand(R, C).clone().requires_grad_(True)
    x = X0[0].expand(R)

    def lj(z):
        return torch.log_softmax(A0, -1)[z] + Normal(mu.gather(-1, z.T).T, SIGMA).log_prob(x)

    out = vt.loss(lj, Categorical(logits=logits), K, objective, estimator)
    return -R * torch.cat(torch.autograd.grad(out.loss, [logits, mu]), -1)


def _exact(objective=O.elbo):
    logits, mu = L0[0].clone().requires_grad_(True), MU0.clone().requires_grad_(True)

    def lj(z):
        return torch.log_softmax(A0, -1)[z] + Normal(mu[z], SIGMA).log_prob(X0[0])

    out = vt.loss(lj, Categorical(logits=logits), 1, objective, E.enumerate())
    return torch.cat(torch.autograd.grad(-out.loss, [logits, mu]))


def _assert_mean(draws, target, what):
    mean, se = draws.mean(0), draws.std(0) / draws.shape[0] ** 0.5
    bad = (mean - target).abs() > Z * se + 1e-12
    assert not bad.any(), f"{what}: mean {mean[bad]} target {target[bad]} se {se[bad]}"


def test_score_with_baseline_agrees_with_enumeration():
    R, K = 40_000, 2
    baseline = E.MovingAverageBaseline(decay=0.5)
    _draws(O.elbo, E.score(baseline), K, 64)  # the baseline learns from earlier draws only
    _assert_mean(_draws(O.elbo, E.score(baseline), K, R), _exact(), "score(baseline)/elbo")


def test_vimco_agrees_with_enumeration_on_the_elbo():
    _assert_mean(_draws(O.elbo, E.vimco, 3, 40_000), _exact(), "vimco/elbo")


def test_vimco_agrees_with_enumeration_of_iwae_k():
    """E[IWAE_K] summed exactly over the C^K tuples of an Independent product of K copies of q."""
    K = 3
    logits, mu = L0[0].clone().requires_grad_(True), MU0.clone().requires_grad_(True)
    q1 = Categorical(logits=logits)
    qk = Independent(Categorical(logits=logits.expand(K, C)), 1)

    def iwae_of_tuple(z):  # z [C^K, K] -> IWAE_K of the tuple's log-weights
        log_w = torch.log_softmax(A0, -1)[z] + Normal(mu[z], SIGMA).log_prob(X0[0]) - q1.log_prob(z)
        return O.iwae(log_w.T)

    exact = torch.cat(torch.autograd.grad(quadrature.expect(iwae_of_tuple, qk, max_support=C**K), [logits, mu]))
    _assert_mean(_draws(O.iwae, E.vimco, K, 40_000), exact, "vimco/iwae_3")


def test_the_comparison_has_power():
    """At this R the comparison detects a gradient 10 % off the exact one."""
    draws = _draws(O.elbo, E.score(E.MovingAverageBaseline()), 2, 40_000)
    target = _exact()
    se = draws.std(0) / draws.shape[0] ** 0.5
    assert ((draws.mean(0) - 1.1 * target).abs() > Z * se).any()


# ---------------------------------------------------------------- refusals


def test_enumerate_refuses_what_it_cannot_sum():
    q = vt.DiagNormal(torch.zeros(2), torch.ones(2))
    with pytest.raises(ValueError, match="finite support") as err:
        vt.loss(lambda z: z.sum(-1), q, 1, O.elbo, E.enumerate())
    assert "no finite support" in str(err.value) or "has none it can enumerate" in str(err.value)
    big = Independent(Bernoulli(logits=torch.zeros(13)), 1)
    with pytest.raises(ValueError, match="8192 support points"):
        vt.check(big, 1, O.elbo, E.enumerate())
    assert vt.check(big, 1, O.elbo, E.enumerate(max_support=8192)) == 8192
    cat = Categorical(logits=torch.zeros(2, 3))
    with pytest.raises(ValueError) as err:
        vt.check(cat, 4, O.piwae(2), E.enumerate())
    text = str(err.value)
    assert "leave num_particles at 1" in text and "independent groups" in text
    with pytest.raises(ValueError, match="no form for weighted particles"):
        vt.check(cat, 1, lambda log_w: log_w.mean(0), E.enumerate())
    with pytest.raises(ValueError, match="is a factory"):
        vt.check(cat, 1, O.elbo, E.enumerate)
    with pytest.raises(ValueError, match="max_support"):
        E.enumerate(max_support=0)
    with pytest.raises(ValueError, match="no finite support"):
        quadrature.support(q)
    with pytest.raises(ValueError, match="to shape"):
        quadrature.expect(lambda z: z.sum(), cat)
