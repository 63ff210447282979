"""Bayesian linear regression oracle against dense Gaussian algebra that shares none of its code."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.models.last_layer import BayesianLinearRegression

N, D = 30, 4


def _data(n=N, d=D, outputs=None, noise=0.6):
    phi = torch.randn(n, d)
    shape = (d,) if outputs is None else (d, outputs)
    y = phi @ torch.randn(shape) + noise * torch.randn(n, *shape[1:])
    return phi, y


@pytest.mark.parametrize("outputs", [None, 3])
def test_evidence_equals_dense_marginal(outputs):
    phi, y = _data(outputs=outputs)
    s, v = 0.8, 0.5
    blr = BayesianLinearRegression(D, prior_scale=s, noise_variance=v).solve_posterior(phi, y)
    cov = s**2 * phi @ phi.T + v * torch.eye(N)
    ys = y.unsqueeze(-1) if outputs is None else y
    expected = MultivariateNormal(torch.zeros(N), cov).log_prob(ys.T).sum()
    # float64 Cholesky on well-conditioned 30x30 and 4x4 systems: agreement to ~1e-12 relative
    torch.testing.assert_close(blr.log_evidence(phi, y), expected, rtol=1e-10, atol=0)


def test_posterior_and_predictive_equal_direct_formulas():
    phi, y = _data()
    s, v = 1.3, 0.4
    blr = BayesianLinearRegression(D, prior_scale=s, noise_variance=v).solve_posterior(phi, y)
    precision = phi.T @ phi / v + torch.eye(D) / s**2
    cov = torch.linalg.inv(precision)
    mean = cov @ phi.T @ y / v
    torch.testing.assert_close(blr.posterior_mean.squeeze(-1), mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(blr.posterior_covariance(), cov, rtol=1e-10, atol=1e-12)
    x = torch.randn(7, D)
    pred = blr(x).predictive
    assert pred.batch_shape == (7,) and pred.event_shape == ()
    torch.testing.assert_close(pred.mean, x @ mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(pred.variance, (x @ cov * x).sum(-1) + v, rtol=1e-10, atol=1e-12)


def test_multi_output_predictive_shape():
    phi, y = _data(outputs=2)
    pred = BayesianLinearRegression(D).solve_posterior(phi, y).predictive(phi[:5])
    assert pred.batch_shape == (5,) and pred.event_shape == (2,)
    assert pred.log_prob(y[:5]).shape == (5,)


def test_tune_reaches_a_stationary_point_of_the_evidence():
    phi, y = _data(n=60, noise=0.3)
    blr = BayesianLinearRegression(D, prior_scale=5.0, noise_variance=3.0)
    before = blr.log_evidence(phi, y)
    blr.tune(phi, y)
    log_s = blr.log_prior_scale.clone().requires_grad_(True)
    log_v = blr.log_noise_variance.clone().requires_grad_(True)
    ev = blr._evidence(phi, y.unsqueeze(-1), log_s, log_v)
    g = torch.autograd.grad(ev, (log_s, log_v))
    # MacKay's fixed point is exactly stationary; 1e-6 leaves room for the 1e-10 stopping tolerance
    assert max(abs(float(t)) for t in g) < 1e-6
    assert ev > before
    # and a maximum, not a saddle: nearby hyperparameters give less evidence
    for ds, dv in [(0.1, 0), (-0.1, 0), (0, 0.1), (0, -0.1)]:
        assert blr._evidence(phi, y.unsqueeze(-1), log_s + ds, log_v + dv) < ev


def test_fitted_model_round_trips_through_state_dict():
    phi, y = _data(outputs=2)
    blr = BayesianLinearRegression(D, prior_scale=0.7, noise_variance=0.3).solve_posterior(phi, y)
    clone = BayesianLinearRegression(D)
    clone.load_state_dict(blr.state_dict())
    x = torch.randn(5, D)
    assert torch.equal(clone(x).predictive.mean, blr(x).predictive.mean)
    assert torch.equal(clone(x).predictive.variance, blr(x).predictive.variance)
    assert torch.equal(clone.log_evidence(phi, y), blr.log_evidence(phi, y))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: BayesianLinearRegression(0), "in_features"),
        (lambda: BayesianLinearRegression(3, prior_scale=0.0), "prior_scale"),
        (lambda: BayesianLinearRegression(3, noise_variance=float("inf")), "noise_variance"),
        (lambda: BayesianLinearRegression(3, noise_variance=float("nan")), "noise_variance"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_data():
    blr = BayesianLinearRegression(D)
    phi, y = _data()
    with pytest.raises(ValueError, match="phi must have shape"):
        blr.solve_posterior(phi[:, :2], y)
    with pytest.raises(ValueError, match="y must have shape"):
        blr.solve_posterior(phi, y[:-1])
    bad = phi.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="phi must be finite"):
        blr.log_evidence(bad, y)
    with pytest.raises(ValueError, match="call solve_posterior"):
        blr.predictive(phi)
