"""VBLL regression against the exact Bayesian linear regression posterior and evidence."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal, kl_divergence

import vitorch as vt
from vitorch.models.last_layer import (
    BayesianLinearRegression,
    Dense,
    DensePrecision,
    Diagonal,
    LowRank,
    VBLLRegression,
)

from conftest import Z

N, D = 40, 5
S, V = 0.9, 0.5  # prior scale and noise variance shared by head and oracle
EXACT = [Dense, DensePrecision]
ALL = [Dense, DensePrecision, Diagonal, LowRank.with_rank(2)]


def _data(outputs=None):
    # correlated features, so that the exact posterior is not diagonal
    phi = torch.randn(N, D) @ (torch.eye(D) + 0.5 * torch.randn(D, D))
    shape = (D,) if outputs is None else (D, outputs)
    return phi, phi @ torch.randn(shape) + 0.7 * torch.randn(N, *shape[1:])


def _head(cov=Dense, out=1, learn=False, **kw):
    return VBLLRegression(D, out, prior_scale=S, noise_variance=V, learn_noise=learn, covariance=cov, **kw)


@pytest.mark.parametrize("cov", EXACT)
@pytest.mark.parametrize("outputs", [None, 3])
def test_closed_form_elbo_equals_log_evidence(cov, outputs):
    phi, y = _data(outputs)
    blr = BayesianLinearRegression(D, prior_scale=S, noise_variance=V).solve_posterior(phi, y)
    head = _head(cov, 1 if outputs is None else outputs).solve_posterior(phi, y)
    # ELBO = log Z - KL(q || posterior) and q is the posterior: equality to rounding
    torch.testing.assert_close(head.elbo(phi, y), blr.log_evidence(phi, y), rtol=1e-10, atol=0)
    torch.testing.assert_close(head.weights.mean.T, blr.posterior_mean, rtol=1e-9, atol=1e-12)
    cov_exact = blr.posterior_covariance().expand(head.out_features, D, D)
    torch.testing.assert_close(head.weights.covariance(), cov_exact, rtol=1e-9, atol=1e-12)
    x = torch.randn(6, D)
    p, q = head(x).predictive, blr(x).predictive
    torch.testing.assert_close(p.mean, q.mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(p.variance, q.variance, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cov", [Dense, DensePrecision, LowRank.with_rank(D - 1)])
def test_gradient_training_converges_to_the_exact_posterior(cov):
    phi, y = _data()
    blr = BayesianLinearRegression(D, prior_scale=S, noise_variance=V).solve_posterior(phi, y)
    head = _head(cov)
    opt = torch.optim.LBFGS(
        head.parameters(), max_iter=400, line_search_fn="strong_wolfe", tolerance_grad=1e-12, tolerance_change=0
    )

    def closure():
        opt.zero_grad()
        value = head.loss(phi, y, num_data=N).loss
        value.backward()
        return value

    opt.step(closure)
    log_z = blr.log_evidence(phi, y)
    # the acceptance tolerance after convergence: 1e-4 relative
    torch.testing.assert_close(head.elbo(phi, y), log_z, rtol=1e-4, atol=0)
    torch.testing.assert_close(head.weights.mean.T, blr.posterior_mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(head.weights.covariance()[0], blr.posterior_covariance(), rtol=1e-4, atol=1e-6)


def test_mean_field_fit_is_the_kl_optimum_and_strictly_below_the_evidence():
    phi, y = _data()
    head = _head(Diagonal).solve_posterior(phi, y)
    elbo = head.elbo(phi, y)
    grads = torch.autograd.grad(elbo, list(head.weights.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-8  # stationary (closed form)
    log_z = BayesianLinearRegression(D, prior_scale=S, noise_variance=V).log_evidence(phi, y)
    assert elbo < log_z - 1e-3  # correlated features: mean field leaves a real gap


def test_parameterizations_agree_where_they_coincide():
    phi, y = _data()
    diag = _head(Diagonal)
    with torch.no_grad():
        diag.weights.mean.normal_()
        diag.weights.log_var.normal_(0, 0.3)
    var = diag.weights.log_var.exp()
    dense, low, prec = _head(Dense), _head(LowRank.with_rank(2)), _head(DensePrecision)
    with torch.no_grad():
        for h in (dense, low, prec):
            h.weights.mean.copy_(diag.weights.mean)
        dense.weights.log_diag.copy_(0.5 * var.log())  # L = diag(sqrt(v))
        low.weights.log_diag.copy_(var.log())
        low.weights.factor.zero_()
        prec.weights.log_diag.copy_(-0.5 * var.log())  # precision factor diag(1/sqrt(v))
    x = torch.randn(7, D)
    ref = diag(x).predictive
    for h in (dense, low, prec):
        torch.testing.assert_close(h.elbo(phi, y), diag.elbo(phi, y), rtol=1e-12, atol=0)
        torch.testing.assert_close(h.weights.quad(x), diag.weights.quad(x), rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(h(x).predictive.variance, ref.variance, rtol=1e-12, atol=1e-14)
    # and a dense posterior set through its precision matches the Cholesky form
    precision = torch.linalg.inv(dense.weights.covariance().detach() + 0.3 * torch.eye(D))
    dense.weights.set_posterior(dense.weights.mean.detach(), precision)
    prec.weights.set_posterior(dense.weights.mean.detach(), precision)
    torch.testing.assert_close(prec.elbo(phi, y), dense.elbo(phi, y), rtol=1e-10, atol=0)


@pytest.mark.parametrize("cov", ALL)
def test_kl_and_covariance_match_torch(cov):
    head = _head(cov, out=2)
    with torch.no_grad():
        for p in head.weights.parameters():
            p.add_(0.3 * torch.randn_like(p))
    w = head.weights
    q = MultivariateNormal(w.mean, w.covariance())
    p = MultivariateNormal(torch.zeros(2, D), S**2 * torch.eye(D))
    torch.testing.assert_close(w.kl_to_isotropic(S**2), kl_divergence(q, p), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(w.trace(), w.covariance().diagonal(dim1=-2, dim2=-1).sum(-1), rtol=1e-10, atol=0)
    torch.testing.assert_close(w.distribution().covariance_matrix, w.covariance(), rtol=1e-10, atol=1e-12)


def test_learned_noise_fit_is_stationary_and_loss_is_the_scaled_objective():
    phi, y = _data(outputs=2)
    head = _head(Dense, out=2, learn=True).solve_posterior(phi, y)
    objective = head.elbo(phi, y) + head.noise_log_prior()
    grads = torch.autograd.grad(objective, list(head.parameters()))
    assert max(float(g.abs().max()) for g in grads) < 1e-6  # coordinate ascent to tol 1e-10
    torch.testing.assert_close(head.loss(phi, y, N).loss, -objective / N, rtol=1e-12, atol=0)


def test_monte_carlo_objectives_through_vt_loss():
    phi, y = _data()
    head = _head(Dense).solve_posterior(phi, y)
    log_z = BayesianLinearRegression(D, prior_scale=S, noise_variance=V).log_evidence(phi, y)
    # at the exact posterior every log-weight equals log Z, so every bound is exact
    for objective in (vt.objectives.elbo, vt.objectives.iwae):
        out = head.mc_loss(phi, y, N, num_particles=4, objective=objective)
        torch.testing.assert_close(out.bound.squeeze(), log_z, rtol=1e-10, atol=0)
    # away from it the sampled ELBO is unbiased for the deterministic one
    with torch.no_grad():
        head.weights.mean.add_(0.2 * torch.randn_like(head.weights.mean))
        head.weights.log_diag.add_(0.2)
    K = 4000
    out = head.mc_loss(phi, y, N, num_particles=K)
    log_w = out.log_w.squeeze(-1)
    se = log_w.std() / K**0.5
    assert abs(float(log_w.mean() - head.elbo(phi, y).detach())) < Z * float(se)
    # and its gradient (reparameterized and sticking-the-landing alike) is the deterministic one on average
    head.zero_grad()
    head.loss(phi, y, N).loss.backward()
    exact = [p.grad.clone() for p in head.parameters()]
    for estimator in (vt.estimators.reparam, vt.estimators.stl):
        draws = []
        for _ in range(200):
            head.zero_grad()
            head.mc_loss(phi, y, N, num_particles=4, estimator=estimator).loss.backward()
            draws.append(torch.cat([p.grad.flatten() for p in head.parameters()]))
        draws = torch.stack(draws)
        se = draws.std(0) / draws.shape[0] ** 0.5
        err = (draws.mean(0) - torch.cat([g.flatten() for g in exact])).abs()
        # off-diagonal entries above the diagonal have identically zero gradient (se = 0, err = 0)
        assert bool((err <= Z * se + 1e-12).all()), (estimator, float((err / (se + 1e-300)).max()))


def test_shapes_and_state_dict_round_trip():
    phi, y = _data(outputs=3)
    head = _head(LowRank.with_rank(2), out=3, learn=True)
    pred = head(phi[:4]).predictive
    assert pred.batch_shape == (4,) and pred.event_shape == (3,)
    assert pred.log_prob(y[:4]).shape == (4,)
    one = _head(Dense)(phi[:4]).predictive
    assert one.batch_shape == (4,) and one.event_shape == ()
    clone = _head(LowRank.with_rank(2), out=3, learn=True)
    clone.load_state_dict(head.state_dict())
    assert torch.equal(clone.elbo(phi, y), head.elbo(phi, y))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: VBLLRegression(D, 0), "out_features"),
        (lambda: VBLLRegression(D, prior_scale=-1.0), "prior_scale"),
        (lambda: VBLLRegression(D, noise_variance=0.0), "noise_variance"),
        (lambda: VBLLRegression(D, covariance=LowRank.with_rank(0)), "rank"),
        (lambda: VBLLRegression(D, covariance=lambda o, i, **k: torch.nn.Linear(i, o)), "WeightPosterior"),
    ],
)
def test_bad_construction(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_data():
    phi, y = _data()
    head = _head()
    with pytest.raises(ValueError, match="phi must have shape"):
        head.elbo(phi[:, :3], y)
    with pytest.raises(ValueError, match="y must have shape"):
        head.elbo(phi, y[:5])
    with pytest.raises(ValueError, match="num_data"):
        head.loss(phi, y, num_data=3)
    bad = y.clone()
    bad[2] = float("inf")
    with pytest.raises(ValueError, match="y must be finite"):
        head.elbo(phi, bad)
    with pytest.raises(ValueError, match="phi must be finite"):
        head.predictive(phi.masked_fill(phi > 1, float("nan")))
    # the training step's loss reads no values (no per-step reduction and read back):
    # a non-finite target shows as a non-finite loss, which vt.fit stops on
    assert not torch.isfinite(head.loss(phi, bad, num_data=N).loss)
