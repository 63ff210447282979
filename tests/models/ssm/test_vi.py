"""Variational inference on state-space models, checked against exact Kalman inference."""

from __future__ import annotations

import math

import pytest
import torch
from _dense import random_model
from torch.distributions import MultivariateNormal

import vitorch as vt
from vitorch.models import ssm

from conftest import Z


def _dense_law(q: ssm.GaussianMarkovChain) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [T*D] and covariance of a Gaussian chain, by pushing the noise basis through its linear map."""
    T, D = q.event_shape
    basis = torch.cat([torch.zeros(1, T * D), torch.eye(T * D)]).reshape(-1, T, D)
    x = q._draw(basis).reshape(-1, T * D)
    B = (x[1:] - x[0]).mT
    return x[0], B @ B.mT


def _log_int_p2_over_q(a, A, b, B):
    """log of the integral of N(x; a, A)^2 / N(x; b, B) (finite when 2 A^-1 - B^-1 is PD)."""
    d = a.shape[-1]
    Ai, Bi = torch.linalg.inv(A), torch.linalg.inv(B)
    Lam, eta = 2 * Ai - Bi, 2 * Ai @ a - Bi @ b
    c = 2 * a @ Ai @ a - b @ Bi @ b
    return (
        0.5 * d * math.log(2 * math.pi) - 0.5 * torch.logdet(Lam) + 0.5 * eta @ torch.linalg.solve(Lam, eta) - 0.5 * c
        - torch.logdet(2 * math.pi * A) + 0.5 * torch.logdet(2 * math.pi * B)
    )  # fmt: skip


def _attached(q: ssm.GaussianMarkovChain) -> ssm.GaussianMarkovChain:
    """The same chain with leaf parameters that require grad (as a trained guide would have)."""
    ps = (q.init_loc, q.init_scale_tril, q.trans_matrix, q.trans_offset, q.trans_scale_tril)
    return ssm.GaussianMarkovChain(*(p.detach().clone().requires_grad_() for p in ps), reverse=q.reverse)


@pytest.fixture
def lg_problem():
    F, Q, H, R, m1, P1 = random_model(2, 1)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(6)
    return m, y


@pytest.mark.parametrize(
    "objective,estimator",
    [
        (vt.objectives.elbo, vt.estimators.reparam),
        (vt.objectives.elbo, vt.estimators.stl),
        (vt.objectives.iwae, vt.estimators.dreg),
        (vt.objectives.cubo(), vt.estimators.reparam),
    ],
)
def test_exact_posterior_gives_zero_variance_bound_equal_to_log_z(lg_problem, objective, estimator):
    m, y = lg_problem
    q = _attached(m.posterior(y))
    means, covs = m.smooth(y)
    torch.testing.assert_close(q.mean, means, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(q.marginal_covariances, covs, rtol=1e-10, atol=1e-10)
    out = vt.loss(lambda x: m.log_joint(x, y), q, num_particles=64, objective=objective, estimator=estimator)
    log_z = m.log_prob(y)
    # Every log-weight is log Z exactly; rounding through O(T) solves on O(1) numbers only.
    torch.testing.assert_close(out.log_w, log_z.expand_as(out.log_w), rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.bound, log_z, rtol=1e-10, atol=1e-10)


def test_exact_posterior_stl_gradient_vanishes(lg_problem):
    # Sticking the landing at q = posterior: the guide gradient is exactly zero, draw by draw.
    m, y = lg_problem
    q = _attached(m.posterior(y))
    params = [q.init_loc, q.init_scale_tril, q.trans_matrix, q.trans_offset, q.trans_scale_tril]
    out = vt.loss(lambda x: m.log_joint(x, y), q, num_particles=16, estimator=vt.estimators.stl)
    # Rounding only: gradients are sums of O(T K) terms of size O(1) that cancel exactly.
    for g in torch.autograd.grad(out.loss, params):
        assert g.abs().max() < 1e-9


def test_other_q_is_sandwiched_elbo_log_z_cubo(lg_problem):
    m, y = lg_problem
    post = m.posterior(y)
    # A wider, shifted chain: finite chi^2 (2 Sigma_p^-1 - Sigma_q^-1 is PD) and a visible gap.
    q = ssm.GaussianMarkovChain(
        post.init_loc + 0.3,
        1.3 * post.init_scale_tril,
        post.trans_matrix,
        post.trans_offset,
        1.3 * post.trans_scale_tril,
        reverse=True,
    )
    log_z = m.log_prob(y)
    a, A = _dense_law(post)
    b, B = _dense_law(q)
    elbo_exact = log_z - torch.distributions.kl_divergence(MultivariateNormal(b, B), MultivariateNormal(a, A))
    cubo_exact = log_z + 0.5 * _log_int_p2_over_q(a, A, b, B)
    assert elbo_exact < log_z - 0.05 and cubo_exact > log_z + 0.05  # the gaps the estimates must resolve
    N = 20_000
    out = vt.loss(lambda x: m.log_joint(x, y), q, num_particles=N)
    se = out.log_w.std() / math.sqrt(N)
    assert abs(out.bound - elbo_exact) <= Z * se  # the MC ELBO is unbiased for the exact one
    assert out.bound + Z * se < log_z  # and resolves ELBO < log Z
    # CUBO_2 estimate 0.5 log mean(w^2): delta-method se = 0.5 sd(w^2) / (sqrt(N) mean(w^2)).
    w2 = (2 * (out.log_w - log_z)).exp()
    cubo_hat = log_z + 0.5 * w2.mean().log()
    cubo_se = 0.5 * w2.std() / (math.sqrt(N) * w2.mean())
    torch.testing.assert_close(vt.objectives.cubo()(out.log_w), cubo_hat, rtol=1e-10, atol=1e-10)
    assert abs(cubo_hat - cubo_exact) <= Z * cubo_se
    assert cubo_hat - Z * cubo_se > log_z


def test_markov_guide_converges_to_the_smoother(lg_problem):
    m, y = lg_problem
    guide = ssm.MarkovGaussianGuide(6, 2)
    opt = torch.optim.Adam(guide.parameters(), lr=0.08)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 250)
    for _ in range(250):
        out = vt.loss(lambda x: m.log_joint(x, y), guide(), num_particles=4, estimator=vt.estimators.stl)
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        sched.step()
    means, covs = m.smooth(y)
    sd = covs.diagonal(dim1=-2, dim2=-1).sqrt()
    with torch.no_grad():
        q = guide()
        _, q_cov = _dense_law(q)
        q_sd = q_cov.diagonal().reshape(6, 2).sqrt()
        # The family contains the posterior and STL's gradient noise vanishes there, so a few hundred
        # steps should land within a tenth of a posterior sd (means) and 10% (sds).
        assert ((q.mean - means).abs() <= 0.1 * sd).all()
        assert ((q_sd / sd - 1).abs() <= 0.1).all()


def test_structured_inference_network_matches_smoother_on_linear_gaussian():
    torch.manual_seed(3)
    F, Q, H, R, m1, P1 = random_model(1, 1)
    m = ssm.LinearGaussianSSM(F, Q, H, R, m1, P1)
    _, y = m.sample(8, (16,))  # amortized over 16 series
    guide = ssm.StructuredInferenceNetwork(1, 1, rnn_dim=16)
    opt = torch.optim.Adam(guide.parameters(), lr=0.02)
    for _ in range(200):
        out = vt.loss(
            lambda x: m.log_joint(x, y), guide(y), 4, objective=vt.objectives.iwae, estimator=vt.estimators.dreg
        )
        opt.zero_grad()
        out.loss.backward()
        opt.step()
    means, covs = m.smooth(y)
    sd = covs[..., 0, 0].sqrt()
    with torch.no_grad():
        N = 2000
        x = guide(y).rsample((N,))[..., 0]
    err = (x.mean(0) - means[..., 0]).abs()
    mc = Z * x.std(0) / math.sqrt(N)
    # Amortization gap plus optimization: a quarter of a posterior sd on average, plus MC error.
    assert (err.mean() <= 0.25 * sd.mean() + mc.mean()).item()
    assert (err <= 0.6 * sd + mc).all()


def test_state_space_model_reproduces_linear_gaussian_log_joint(lg_problem):
    m, y = lg_problem
    model = ssm.StateSpaceModel(
        lambda: MultivariateNormal(m.init_mean, m.init_cov),
        lambda x, t: MultivariateNormal(x @ m.transition_matrix.mT, m.transition_cov),
        lambda x, t: MultivariateNormal(x @ m.emission_matrix.mT, m.emission_cov),
    )
    x = m.sample_posterior(y, (5,))
    torch.testing.assert_close(model.log_joint(x, y), m.log_joint(x, y), rtol=1e-10, atol=1e-10)
    diag = ssm.StateSpaceModel(
        lambda: torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1),
        ssm.GaussianTransition(m.transition_matrix, 0.7),
        ssm.GaussianEmission(m.emission_matrix, 0.4),
    )
    ref = ssm.LinearGaussianSSM(
        m.transition_matrix, 0.49 * torch.eye(2), m.emission_matrix, 0.16 * torch.eye(1), torch.zeros(2), torch.eye(2)
    )
    torch.testing.assert_close(diag.log_joint(x, y), ref.log_joint(x, y), rtol=1e-10, atol=1e-10)


def test_count_and_binary_emissions_against_scipy():
    stats = pytest.importorskip("scipy.stats")
    x = torch.randn(3, 5, 2)
    W = torch.randn(4, 2)
    counts = torch.poisson((x @ W.mT).exp())
    d = ssm.PoissonEmission(W)(x)
    ref = stats.poisson.logpmf(counts.numpy(), (x @ W.mT).exp().numpy()).sum(-1)
    torch.testing.assert_close(d.log_prob(counts), torch.tensor(ref), rtol=1e-10, atol=1e-10)
    bits = torch.bernoulli(torch.sigmoid(x @ W.mT))
    ref = stats.bernoulli.logpmf(bits.numpy(), torch.sigmoid(x @ W.mT).numpy()).sum(-1)
    torch.testing.assert_close(ssm.BernoulliEmission(W)(x).log_prob(bits), torch.tensor(ref), rtol=1e-8, atol=1e-8)
    with pytest.raises(ValueError):
        d.log_prob(counts + 0.5)  # outside the support of the Poisson
    with pytest.raises(ValueError, match="scale"):
        ssm.GaussianEmission(W, -1.0)


def test_autoregressive_path_density_and_stopped_parameters():
    net = ssm.DMMCombiner(2, 8)
    ctx = torch.randn(3, 7, 8).tanh()
    q = ssm.AutoregressiveGaussianPath(net, ctx, torch.zeros(2))
    x, log_q = q.rsample_and_log_prob((5,))
    assert x.shape == (5, 3, 7, 2) and log_q.shape == (5, 3)
    torch.testing.assert_close(q.log_prob(x), log_q, rtol=1e-10, atol=1e-10)
    stopped = q.detach().log_prob(x.detach())
    torch.testing.assert_close(stopped, log_q.detach(), rtol=1e-10, atol=1e-10)
    assert not stopped.requires_grad
    # Through the path of z alone, log q at stopped parameters still reaches the network.
    grads = torch.autograd.grad(q.detach().log_prob(x).sum(), list(net.parameters()), allow_unused=True)
    assert all(g is not None for g in grads)


def test_sde_log_joint_matches_step_by_step_density():
    drift = lambda x, th: -th[..., :1] * x  # noqa: E731  (Ornstein-Uhlenbeck)
    diffusion = lambda x, th: (th[..., 1:2] ** 2).unsqueeze(-1) * torch.eye(1).expand(*x.shape[:-1], 1, 1)  # noqa: E731
    prior = torch.distributions.Independent(torch.distributions.Normal(torch.zeros(2), 1.0), 1)
    sde = ssm.EulerMaruyamaSDE(drift, diffusion, torch.ones(1), 0.1, 5, [2, 5], 0.3, prior)
    u = torch.randn(4, 2)
    x = torch.randn(4, 5, 1)
    y = torch.randn(2, 1)
    z = torch.cat([u, x.flatten(-2)], -1)
    theta = u.exp()
    expected = prior.log_prob(u)
    prev = torch.ones(4, 1)
    for k in range(5):
        mean = prev - theta[:, :1] * prev * 0.1
        expected = expected + torch.distributions.Normal(mean, theta[:, 1:] * math.sqrt(0.1)).log_prob(x[:, k]).sum(-1)
        prev = x[:, k]
    expected = expected + torch.distributions.Normal(x[:, [1, 4]], 0.3).log_prob(y).sum((-1, -2))
    torch.testing.assert_close(sde.log_joint(z, y), expected, rtol=1e-10, atol=1e-10)
    guide = ssm.SDEPosterior(sde, y, hidden=(8,))
    q = guide()
    z, log_q = q.rsample_and_log_prob((6,))
    assert z.shape == (6, sde.event_size)
    torch.testing.assert_close(q.log_prob(z), log_q, rtol=1e-10, atol=1e-10)
    out = vt.loss(lambda z: sde.log_joint(z, y), q, 6, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
    out.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in guide.parameters())
    with pytest.raises(ValueError, match="obs_index"):
        ssm.EulerMaruyamaSDE(drift, diffusion, torch.ones(1), 0.1, 5, [0, 5], 0.3, prior)


def test_model_gradient_through_vt_loss_is_the_score_of_log_z(lg_problem):
    # Fisher's identity: with q the exact posterior at theta_0 (held fixed), the ELBO's gradient with
    # respect to the model's parameters is E_q[grad log p(x, y)] = grad log p(y) at theta_0.
    m, y = lg_problem
    q = m.posterior(y)  # no path to the model's parameters below
    F = m.transition_matrix.clone().requires_grad_()
    H = m.emission_matrix.clone().requires_grad_()
    model = ssm.LinearGaussianSSM(F, m.transition_cov, H, m.emission_cov, m.init_mean, m.init_cov)
    exact = torch.autograd.grad(model.log_prob(y), (F, H))
    batches = []
    for _ in range(40):
        out = vt.loss(lambda x: model.log_joint(x, y), q, num_particles=100)
        batches.append(torch.cat([g.flatten() for g in torch.autograd.grad(-out.loss, (F, H))]))
    grads = torch.stack(batches)
    target = torch.cat([g.flatten() for g in exact])
    se = grads.std(0) / math.sqrt(grads.shape[0])
    assert ((grads.mean(0) - target).abs() <= Z * se).all()
