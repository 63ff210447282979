"""VBLL classification bounds against Monte Carlo expected log-likelihoods, plus metrics against scikit-learn."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.models.last_layer import (
    BayesianLinearRegression,
    Dense,
    DensePrecision,
    Diagonal,
    LowRank,
    VBLLClassification,
    VBLLGenerativeClassification,
    metrics,
)

from conftest import Z

N, D, C = 12, 3, 4


def _data(n=N):
    centers = 1.5 * torch.randn(C, D)
    y = torch.randint(0, C, (n,))
    return centers[y] + torch.randn(n, D), y


def _perturb(module, scale=0.4):
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))


def _mc_mean_and_se(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return values.mean(0), values.std(0) / values.shape[0] ** 0.5


@pytest.mark.parametrize("cov", [Dense, Diagonal])
def test_discriminative_bound_below_monte_carlo_expected_log_likelihood(cov):
    phi, y = _data()
    head = VBLLClassification(D, C, noise_variance=0.3, covariance=cov)
    _perturb(head)
    bound = head.bound(phi, y).detach()
    # E_q log softmax(W phi + eps)_y by sampling the weights themselves (not the logit marginals)
    K = 20000
    w = head.weights.distribution().sample((K,))  # [K, C, D]
    logits = torch.einsum("kcd,nd->knc", w, phi) + head.noise_variance.detach().sqrt() * torch.randn(K, N, C)
    mean, se = _mc_mean_and_se(logits.log_softmax(-1).gather(-1, y.expand(K, N).unsqueeze(-1)).squeeze(-1))
    assert bool((bound <= mean + Z * se).all())
    # power: the Jensen gap is resolved by the Monte Carlo estimate (mean gap beyond Z of its standard errors)
    assert float((mean - bound).mean()) > Z * float(se.pow(2).sum().sqrt() / N)


def test_discriminative_bound_is_exact_without_uncertainty():
    phi, y = _data()
    head = VBLLClassification(D, C, noise_variance=0.0, learn_noise=False, covariance=Diagonal)
    with torch.no_grad():
        head.weights.mean.normal_()
        head.weights.log_var.fill_(-80.0)  # variances e^-80: Jensen's gap is below float64 resolution
    expected = (phi @ head.weights.mean.T).log_softmax(-1).gather(-1, y[:, None]).squeeze(-1)
    torch.testing.assert_close(head.bound(phi, y), expected, rtol=1e-12, atol=1e-12)


def test_generative_bound_below_monte_carlo_expected_log_likelihood():
    phi, y = _data()
    head = VBLLGenerativeClassification(D, C, noise_variance=0.8)
    _perturb(head, 0.3)
    with torch.no_grad():
        head.means.log_var.add_(1.0)  # sizeable posterior variance of the class means
    bound = head.bound(phi, y).detach()
    K = 20000
    mu = head.means.distribution().sample((K,))  # [K, C, D]
    var = head.noise_variance.detach()
    log_lik = -0.5 * ((phi[None, :, None, :] - mu[:, None]) ** 2 / var + var.log()).sum(-1)  # [K, N, C] up to const
    log_post = (log_lik + head.log_class_prior).log_softmax(-1)
    mean, se = _mc_mean_and_se(log_post.gather(-1, y.expand(K, N).unsqueeze(-1)).squeeze(-1))
    assert bool((bound <= mean + Z * se).all())
    assert float((mean - bound).mean()) > Z * float(se.pow(2).sum().sqrt() / N)


def test_generative_fit_is_the_conjugate_posterior_of_the_class_means():
    phi, y = _data(n=40)
    s, v = 1.7, 0.6
    head = VBLLGenerativeClassification(D, C, prior_scale=s, noise_variance=v, learn_noise=False).solve_posterior(
        phi, y
    )
    # each feature coordinate is a Bayesian linear regression on the one-hot class design
    onehot = torch.nn.functional.one_hot(y, C).to(phi.dtype)
    blr = BayesianLinearRegression(C, prior_scale=s, noise_variance=v).solve_posterior(onehot, phi)
    torch.testing.assert_close(head.means.mean, blr.posterior_mean, rtol=1e-10, atol=1e-12)
    cov = blr.posterior_covariance().diagonal()[:, None].expand(C, D)
    torch.testing.assert_close(head.means.covariance().diagonal(dim1=-2, dim2=-1), cov, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cov", [Dense, Diagonal])
def test_generative_predictive_is_bayes_rule_on_the_marginals(cov):
    phi, y = _data()
    head = VBLLGenerativeClassification(D, C, covariance=cov)
    _perturb(head, 0.2)
    cov = head.means.covariance() + torch.diag(head.noise_variance)
    log_lik = torch.stack([MultivariateNormal(head.means.mean[k], cov[k]).log_prob(phi) for k in range(C)], -1)
    out = head(phi)
    torch.testing.assert_close(out.predictive.logits, (log_lik + head.log_class_prior).log_softmax(-1))
    torch.testing.assert_close(out.ood_score, -torch.logsumexp(log_lik + head.log_class_prior, -1))


def test_training_improves_fit_and_flags_far_away_inputs():
    phi, y = _data(n=200)
    disc = VBLLClassification(D, C)
    before = disc.elbo(phi, y).detach()
    disc.solve_posterior(phi, y)
    assert disc.elbo(phi, y) > before
    objective = disc.elbo(phi, y) + disc.noise_log_prior()
    grads = torch.autograd.grad(objective, list(disc.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-3 * N  # L-BFGS reached a stationary point
    gen = VBLLGenerativeClassification(D, C).solve_posterior(phi, y)
    far = 8 * torch.randn(100, D)
    for head in (disc, gen):
        out = head(phi)
        assert out.predictive.probs.shape == (200, C) and out.ood_score.shape == (200,)
        torch.testing.assert_close(out.predictive.probs.sum(-1), torch.ones(200))
    assert metrics.auroc(gen(phi).ood_score, gen(far).ood_score) > 0.95


def test_metrics_against_references():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    s_in = torch.tensor([0.1, 0.4, 0.35, 0.8, 0.4])
    s_out = torch.tensor([0.9, 0.4, 0.7])
    labels = [0] * 5 + [1] * 3
    expected = sklearn_metrics.roc_auc_score(labels, torch.cat([s_in, s_out]).numpy())
    assert metrics.auroc(s_in, s_out) == pytest.approx(expected, abs=1e-12)
    probs = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.3, 0.7], [0.45, 0.55]])
    labels = torch.tensor([0, 1, 1, 1])
    # two bins: (0, .5] is empty; (.5, 1] holds all four: mean confidence 2.75 / 4, accuracy 3 / 4
    assert metrics.expected_calibration_error(probs, labels, num_bins=2) == pytest.approx(0.0625, abs=1e-12)
    assert metrics.accuracy(probs, labels) == pytest.approx(0.75)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VBLLClassification(D, 1), "num_classes"),
        (lambda: VBLLClassification(D, C, noise_variance=-1.0), "noise_variance"),
        (lambda: VBLLClassification(D, C, noise_variance=0.0, learn_noise=True), "learn_noise"),
        (lambda: VBLLGenerativeClassification(D, C, prior_scale=float("nan")), "prior_scale"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [VBLLClassification, VBLLGenerativeClassification])
def test_bad_labels(cls):
    phi, y = _data()
    head = cls(D, C)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 3\]"):
        head.elbo(phi, torch.full_like(y, C))
    with pytest.raises(ValueError, match="integer tensor"):
        head.elbo(phi, y.double())
    with pytest.raises(ValueError, match="y must have shape"):
        head.elbo(phi, y[:3])
    with pytest.raises(ValueError, match="num_data"):
        head.loss(phi, y, num_data=0)


@pytest.mark.parametrize("cov", [Dense, Diagonal, LowRank.with_rank(2), DensePrecision])
def test_joint_distribution_is_the_block_diagonal_of_the_rows(cov):
    head = VBLLClassification(D, C, noise_variance=0.0, learn_noise=False, covariance=cov)
    _perturb(head, 0.3)
    joint = head.weights.joint_distribution()
    torch.testing.assert_close(joint.mean, head.weights.mean.flatten())
    torch.testing.assert_close(joint.covariance_matrix, torch.block_diag(*head.weights.covariance().unbind(0)))


@pytest.mark.parametrize("cov", [Dense, Diagonal])
def test_monte_carlo_bound_through_vt_loss_sits_above_the_jensen_bound(cov):
    phi, y = _data()
    head = VBLLClassification(D, C, noise_variance=0.0, learn_noise=False, covariance=cov)
    _perturb(head, 0.4)
    K = 4000
    out = head.mc_loss(phi, y, N, num_particles=K)
    log_w = out.log_w
    # log w = log p(y | W) + log p(W) - log q(W): its mean is E_q log p(y | W) - KL
    w = out.z.detach().view(K, C, D)
    log_lik = torch.einsum("kcd,nd->knc", w, phi).log_softmax(-1).gather(-1, y.expand(K, N)[..., None]).sum((-2, -1))
    kl = head.kl().detach()
    se = (log_w - log_lik).std() / K**0.5
    assert abs(float(log_w.mean() - (log_lik.mean() - kl))) < Z * float(se)
    # Jensen's bound is below the sampled ELBO, with power to see the gap
    se_w = log_w.std() / K**0.5
    gap = float(log_w.mean() - head.elbo(phi, y).detach())
    assert gap > Z * float(se_w)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.weights.parameters())


def test_monte_carlo_bound_needs_the_noise_free_head():
    phi, y = _data()
    with pytest.raises(ValueError, match="noise-free"):
        VBLLClassification(D, C).mc_loss(phi, y, N)
