"""Post hoc refit with type-II tuning (``VBLLRegression.solve_posterior(..., tune=True)``) against the BLR oracle."""

from __future__ import annotations

import pytest
import torch

from vitorch.models.last_layer import (
    BayesianLinearRegression,
    Dense,
    DensePrecision,
    Diagonal,
    LowRank,
    VBLLDenseNoiseRegression,
    VBLLRegression,
)
from vitorch.models.last_layer._evidence import log_evidence

N, D = 60, 5


def _data(outputs=None, noise=0.4):
    phi = torch.randn(N, D) @ (torch.eye(D) + 0.5 * torch.randn(D, D))
    shape = (D,) if outputs is None else (D, outputs)
    y = phi @ torch.randn(shape) + noise * torch.randn(N, *shape[1:])
    if outputs is not None:
        y = y * torch.linspace(0.5, 3.0, outputs)  # outputs on different scales: different noises
    return phi, y


def _tuned(outputs=None, cov=Dense, learn=True):
    phi, y = _data(outputs)
    head = VBLLRegression(D, outputs or 1, prior_scale=5.0, noise_variance=3.0, learn_noise=learn, covariance=cov)
    before = head.log_evidence(phi, y)
    return phi, y, head.solve_posterior(phi, y, tune=True), before


@pytest.mark.parametrize("cov", [Dense, DensePrecision])
@pytest.mark.parametrize("learn", [True, False])
def test_single_output_refit_equals_blr_tuned_and_fitted(cov, learn):
    phi, y, head, _ = _tuned(cov=cov, learn=learn)
    blr = BayesianLinearRegression(D, prior_scale=5.0, noise_variance=3.0).tune(phi, y)
    # the same fixed point from the same start, stopped at 1e-10 in the log-hyperparameters
    torch.testing.assert_close(torch.tensor(head.prior_scale), blr.prior_scale, rtol=1e-8, atol=0)
    torch.testing.assert_close(head.noise_variance, blr.noise_variance.reshape(1), rtol=1e-8, atol=0)
    # posterior and predictive at those hyperparameters: BLR's, to float64 round-off
    torch.testing.assert_close(head.weights.mean[0], blr.posterior_mean[:, 0], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(head.weights.covariance()[0], blr.posterior_covariance(), rtol=1e-6, atol=1e-9)
    x = torch.randn(9, D)
    ours, theirs = head(x).predictive, blr(x).predictive
    torch.testing.assert_close(ours.mean, theirs.mean, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(ours.variance, theirs.variance, rtol=1e-6, atol=1e-9)
    # the head's evidence is BLR's, and its ELBO at the exact posterior equals it
    torch.testing.assert_close(head.log_evidence(phi, y), blr.log_evidence(phi, y), rtol=1e-10, atol=0)
    torch.testing.assert_close(head.elbo(phi, y), blr.log_evidence(phi, y), rtol=1e-8, atol=0)


def test_multi_output_evidence_is_a_sum_of_blrs_and_the_refit_is_exact_per_row():
    phi, y, head, before = _tuned(outputs=3)
    s, v = head.prior_scale, head.noise_variance.detach()
    assert len(set(v.tolist())) == 3  # one noise per output, not a shared one
    blrs = [
        BayesianLinearRegression(D, prior_scale=s, noise_variance=float(v[i])).solve_posterior(phi, y[:, i])
        for i in range(3)
    ]
    oracle = sum(b.log_evidence(phi, y[:, i]) for i, b in enumerate(blrs))
    torch.testing.assert_close(head.log_evidence(phi, y), oracle, rtol=1e-10, atol=0)
    assert head.log_evidence(phi, y) > before
    for i, b in enumerate(blrs):
        torch.testing.assert_close(head.weights.mean[i], b.posterior_mean[:, 0], rtol=1e-6, atol=1e-9)
        torch.testing.assert_close(head.weights.covariance()[i], b.posterior_covariance(), rtol=1e-6, atol=1e-9)
    pred = head(phi[:4]).predictive
    for i, b in enumerate(blrs):
        torch.testing.assert_close(pred.variance[:, i], b(phi[:4]).predictive.variance, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("outputs", [None, 3])
def test_tuned_evidence_is_a_stationary_maximum(outputs):
    phi, y, head, before = _tuned(outputs)
    y2 = y if outputs else y[:, None]
    log_s = torch.tensor(head.prior_scale).log().requires_grad_(True)
    log_v = head.log_noise_variance.detach().clone().requires_grad_(True)
    ev = log_evidence(phi, y2, log_s, log_v)
    grads = torch.autograd.grad(ev, (log_s, log_v))
    # MacKay's fixed point is exactly stationary; 1e-6 leaves room for the 1e-10 stopping tolerance
    assert max(float(g.abs().max()) for g in grads) < 1e-6
    assert ev > before

    # a maximum, not a saddle: the Hessian in the log-hyperparameters is negative definite
    def f(p):
        return log_evidence(phi, y2, p[0], p[1:])

    hess = torch.autograd.functional.hessian(f, torch.cat([log_s.detach()[None], log_v.detach()]))
    assert float(torch.linalg.eigvalsh(hess).max()) < 0


@pytest.mark.parametrize("cov", [Diagonal, LowRank.with_rank(2)])
def test_every_parameterization_tunes_to_the_same_evidence_maximum(cov):
    # the evidence is that of the model, not of the family: the hyperparameters agree
    # exactly; the posterior is then the family's best approximation, with ELBO below it
    phi, y = _data(outputs=2)
    dense, other = (
        VBLLRegression(D, 2, prior_scale=5.0, noise_variance=3.0, covariance=c).solve_posterior(phi, y, tune=True)
        for c in (Dense, cov)
    )
    assert other.prior_scale == dense.prior_scale
    assert torch.equal(other.noise_variance, dense.noise_variance)
    assert other.elbo(phi, y) < dense.elbo(phi, y)


def test_tuned_prior_scale_round_trips_through_state_dict():
    phi, y, head, _ = _tuned()
    clone = VBLLRegression(D, 1, prior_scale=1.0, noise_variance=1.0)
    clone.load_state_dict(head.state_dict())
    assert clone.prior_scale == head.prior_scale
    assert torch.equal(clone.elbo(phi, y), head.elbo(phi, y))
    with pytest.raises(ValueError, match="prior_scale"):
        clone.load_state_dict({**head.state_dict(), "_extra_state": {"prior_scale": -1.0}})
    with pytest.raises(ValueError, match="extra state must be a dict"):
        clone.load_state_dict({**head.state_dict(), "_extra_state": 0.5})


def test_bad_input():
    phi, y = _data()
    with pytest.raises(ValueError, match="no finite maximizer"):
        VBLLRegression(D, 1).solve_posterior(torch.zeros(N, D), y, tune=True)
    dense = VBLLDenseNoiseRegression(D, 2)
    with pytest.raises(ValueError, match="diagonal noise"):
        dense.solve_posterior(phi, torch.stack([y, y], -1), tune=True)
    with pytest.raises(ValueError, match="phi must have shape"):
        VBLLRegression(D, 1).solve_posterior(phi[:, :2], y, tune=True)
