"""VBLL regression with a dense noise covariance against the exact matrix-normal evidence."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.models.last_layer import VBLLDenseNoiseRegression, VBLLRegression

from conftest import Z

N, D, O = 25, 3, 3
S = 0.9


def _data():
    phi = torch.randn(N, D)
    return phi, phi @ torch.randn(D, O) + 0.5 * torch.randn(N, O) @ torch.randn(O, O)


def _evidence(phi, y, sigma):
    """log p(vec Y) with Cov(y_ni, y_mj) = delta_ij s^2 phi_n.phi_m + delta_nm Sigma_ij (rows of Y flattened)."""
    cov = torch.kron(S**2 * phi @ phi.T, torch.eye(O)) + torch.kron(torch.eye(N), sigma)
    return MultivariateNormal(torch.zeros(N * O), cov).log_prob(y.reshape(-1))


def _head_with_noise(sigma, learn=False):
    head = VBLLDenseNoiseRegression(D, O, prior_scale=S, noise_variance=1.0, learn_noise=learn)
    tril = torch.linalg.cholesky(sigma)
    with torch.no_grad():
        head.noise_raw.copy_(tril.tril(-1))
        head.noise_raw.diagonal().copy_(tril.diagonal().log())
    return head


def test_fit_is_optimal_and_below_the_evidence_when_noise_is_correlated():
    phi, y = _data()
    a = torch.randn(O, O)
    sigma = a @ a.T + 0.3 * torch.eye(O)
    head = _head_with_noise(sigma).solve_posterior(phi, y)
    torch.testing.assert_close(head.noise_covariance(), sigma)
    elbo = head.elbo(phi, y)
    grads = torch.autograd.grad(elbo, list(head.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-8  # closed-form optimum of the family
    # the row-independent family cannot hold the coupled posterior: a strict gap
    assert elbo < _evidence(phi, y, sigma) - 1e-3


def test_diagonal_noise_recovers_the_exact_evidence_and_the_diagonal_head():
    phi, y = _data()
    sigma = torch.diag(torch.tensor([0.4, 0.7, 1.1]))
    head = _head_with_noise(sigma).solve_posterior(phi, y)
    torch.testing.assert_close(head.elbo(phi, y), _evidence(phi, y, sigma), rtol=1e-10, atol=0)
    diag = VBLLRegression(D, O, prior_scale=S, learn_noise=False)
    diag.log_noise_variance.copy_(sigma.diagonal().log())
    diag.solve_posterior(phi, y)
    x = torch.randn(4, D)
    torch.testing.assert_close(head(x).predictive.covariance_matrix, torch.diag_embed(diag(x).predictive.variance))


def test_learned_noise_fit_is_stationary_and_loss_matches_on_full_batch():
    phi, y = _data()
    head = VBLLDenseNoiseRegression(D, O, prior_scale=S).solve_posterior(phi, y)
    objective = head.elbo(phi, y) + head.noise_log_prior()
    grads = torch.autograd.grad(objective, list(head.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-6
    torch.testing.assert_close(head.loss(phi, y, N).loss, -objective / N)


def test_monte_carlo_elbo_through_vt_loss_is_unbiased():
    phi, y = _data()
    head = VBLLDenseNoiseRegression(D, O, prior_scale=S, learn_noise=False)
    with torch.no_grad():
        for p in head.parameters():
            p.add_(0.3 * torch.randn_like(p))
        head.noise_raw.add_(0.3 * torch.randn_like(head.noise_raw))
    K = 4000
    out = head.mc_loss(phi, y, N, num_particles=K)
    se = out.log_w.std() / K**0.5
    assert abs(float(out.log_w.mean() - head.elbo(phi, y).detach())) < Z * float(se)
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters())


def test_bad_targets():
    phi, y = _data()
    with pytest.raises(ValueError, match="y must have shape"):
        VBLLDenseNoiseRegression(D, O).elbo(phi, y[:, :2])
