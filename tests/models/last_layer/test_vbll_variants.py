"""Student-t and heteroscedastic VBLL heads against closed forms and Monte Carlo."""

from __future__ import annotations

import math

import pytest
import torch

from vitorch.models.last_layer import (
    DensePrecision,
    Diagonal,
    VBLLHeteroscedasticRegression,
    VBLLRegression,
    VBLLStudentTRegression,
)

from conftest import Z

N, D = 30, 4


def _data(outputs=None):
    phi = torch.randn(N, D)
    shape = (D,) if outputs is None else (D, outputs)
    return phi, phi @ torch.randn(shape) + 0.5 * torch.randn(N, *shape[1:])


def _multivariate_t_log_prob(y, nu, cov):
    """Log density of a zero-mean multivariate Student-t, written from its textbook formula."""
    n = y.shape[0]
    tril = torch.linalg.cholesky(cov)
    u = torch.linalg.solve_triangular(tril, y[:, None], upper=False).squeeze(-1)
    log_det = 2 * tril.diagonal().log().sum()
    norm = math.lgamma((nu + n) / 2) - math.lgamma(nu / 2) - 0.5 * n * math.log(nu * math.pi)
    return norm - 0.5 * log_det - 0.5 * (nu + n) * torch.log1p(u @ u / nu)


@pytest.mark.parametrize("outputs", [None, 2])
def test_student_t_elbo_at_the_exact_posterior_is_the_evidence(outputs):
    phi, y = _data(outputs)
    s, a0, b0 = 1.3, 2.0, 1.5
    head = VBLLStudentTRegression(D, 1 if outputs is None else outputs, s, a0, b0).solve_posterior(phi, y)
    cov = (b0 / a0) * (torch.eye(N) + s**2 * phi @ phi.T)
    ys = y[:, None] if outputs is None else y
    expected = sum(_multivariate_t_log_prob(ys[:, i], 2 * a0, cov) for i in range(ys.shape[1]))
    torch.testing.assert_close(head.elbo(phi, y), expected, rtol=1e-10, atol=0)
    # the fit is a maximum: every parameter's gradient vanishes
    grads = torch.autograd.grad(head.elbo(phi, y), list(head.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-8


def test_student_t_predictive_and_parameterizations():
    phi, y = _data()
    dense = VBLLStudentTRegression(D).solve_posterior(phi, y)
    prec = VBLLStudentTRegression(D, covariance=DensePrecision).solve_posterior(phi, y)
    torch.testing.assert_close(prec.elbo(phi, y), dense.elbo(phi, y), rtol=1e-10, atol=0)
    x = torch.randn(5, D)
    pred = dense(x).predictive
    a, b = dense.precision_posterior().concentration, dense.precision_posterior().rate
    cov = dense.weights.covariance()[0]
    torch.testing.assert_close(pred.df, (2 * a).expand(5))
    torch.testing.assert_close(pred.scale.pow(2), (b / a) * (1 + (x @ cov * x).sum(-1)))
    assert VBLLStudentTRegression(D, 3)(x).predictive.event_shape == (3,)


def test_heteroscedastic_elbo_is_unbiased_for_the_sampled_objective():
    phi, y = _data()
    head = VBLLHeteroscedasticRegression(D, noise_covariance=Diagonal)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
    K = 20000
    w = head.weights.distribution().sample((K,))[:, 0]  # [K, D]
    u = head.noise_weights.distribution().sample((K,))[:, 0]
    log_var = u @ phi.T + head.log_noise_offset.detach()  # [K, N]
    log_lik = (-0.5 * (math.log(2 * math.pi) + log_var + (y - w @ phi.T).pow(2) / log_var.exp())).sum(-1)
    se = log_lik.std() / K**0.5
    expected = head.expected_log_likelihood(phi, y).sum().detach()
    assert abs(float(log_lik.mean() - expected)) < Z * float(se)


def test_heteroscedastic_predictive_matches_monte_carlo_and_collapses_to_homoscedastic():
    phi, y = _data()
    head = VBLLHeteroscedasticRegression(D, noise_prior_scale=0.5)
    with torch.no_grad():
        head.noise_weights.mean.normal_(0, 0.3)
    x, yx = phi[:6], y[:6]
    # p(y | x) = E_l N(y | m, x^T S x + e^l), l ~ N(mu, t), estimated by sampling l
    mu, t = (v.detach() for v in head.log_variance_moments(x))
    K = 20000
    var = head.weights.quad(x).detach() + (mu + t.sqrt() * torch.randn(K, 6, 1)).exp()
    mean = (x @ head.weights.mean.T).detach()
    dens = torch.exp(-0.5 * (yx[:, None] - mean).pow(2) / var) / (2 * math.pi * var).sqrt()  # [K, 6, 1]
    dens = dens.squeeze(-1)
    mc, se = dens.mean(0), dens.std(0) / K**0.5
    quad = head(x).predictive.log_prob(yx).exp().detach()
    assert bool(((quad - mc).abs() < Z * se).all())
    # collapsing q(U) to u = 0 recovers the homoscedastic head with sigma^2 = exp(c)
    with torch.no_grad():
        head.noise_weights.mean.zero_()
        head.noise_weights.log_var.fill_(-200.0)
        head.log_noise_offset.fill_(math.log(0.7))
    homo = VBLLRegression(D, prior_scale=1.0, noise_variance=0.7, learn_noise=False)
    homo.weights.load_state_dict(head.weights.state_dict())
    torch.testing.assert_close(head.expected_log_likelihood(phi, y).sum(), homo.elbo(phi, y) + homo.kl())
    torch.testing.assert_close(head(x).predictive.variance, homo(x).predictive.variance)


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VBLLStudentTRegression(D, prior_concentration=0.0), "prior_concentration"),
        (lambda: VBLLStudentTRegression(D, prior_rate=-2.0), "prior_rate"),
        (lambda: VBLLHeteroscedasticRegression(D, noise_prior_scale=0.0), "noise_prior_scale"),
        (lambda: VBLLHeteroscedasticRegression(D, num_quadrature=0), "num_quadrature"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("cls", [VBLLStudentTRegression, VBLLHeteroscedasticRegression])
def test_bad_data(cls):
    phi, y = _data()
    head = cls(D)
    with pytest.raises(ValueError, match="y must have shape"):
        head.elbo(phi, y[:4])
    with pytest.raises(ValueError, match="num_data"):
        head.loss(phi, y, num_data=2)
