"""Pathfinder (Zhang et al., 2022) against dense BFGS algebra and Gaussian targets.

Oracles: the compact inverse Hessian equals the sequential BFGS recursion; the diagonal
update equals the diagonal of the scaled BFGS update formed densely; the cheap sampler's
``log q`` equals ``FullRankNormal.log_prob``; on a Gaussian target the selected mean is
the target's, and with an exact line search (conjugate pairs) and a history of ``D`` pairs
the selected normal is the target itself.  Stochastic assertions use ``Z`` standard
errors (conftest: 1e-4 false failures per run).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import MultivariateNormal

import vitorch as vt
from vitorch.diagnostics import ess
from vitorch.gvi import multipath_pathfinder, pathfinder
from vitorch.gvi.lbfgs import inverse_hessian_factors, update_diagonal
from vitorch.gvi.pathfinder import _approximation
from vitorch.model import Model, Site

from conftest import Z


def _gaussian(d: int, generator: torch.Generator) -> MultivariateNormal:
    a = torch.randn(d, d, generator=generator)
    precision = a @ a.T / d + 0.3 * torch.eye(d)
    return MultivariateNormal(torch.randn(d, generator=generator), precision_matrix=precision)


def _pairs(d: int, j: int, generator: torch.Generator):
    a = torch.randn(d, d, generator=generator)
    hess = a @ a.T + d * torch.eye(d)
    s = torch.randn(d, j, generator=generator)
    return s, hess @ s


def test_compact_inverse_hessian_equals_sequential_bfgs(generator):
    d, j = 6, 4
    s, y = _pairs(d, j, generator)
    alpha = torch.rand(d, generator=generator) + 0.5
    beta, gamma = inverse_hessian_factors(alpha, s, y)
    h = torch.diag(alpha)
    eye = torch.eye(d)
    for i in range(j):  # oldest pair first
        rho = 1 / (y[:, i] @ s[:, i])
        h = (eye - rho * torch.outer(s[:, i], y[:, i])) @ h @ (eye - rho * torch.outer(y[:, i], s[:, i]))
        h = h + rho * torch.outer(s[:, i], s[:, i])
    assert torch.allclose(torch.diag(alpha) + beta @ gamma @ beta.T, h, atol=1e-12)


def test_diagonal_update_is_the_diagonal_of_the_scaled_bfgs_update(generator):
    d = 5
    s, y = _pairs(d, 1, generator)
    s, y = s[:, 0], y[:, 0]
    alpha = torch.rand(d, generator=generator) + 0.5
    b = torch.diag(1 / alpha) * (y @ (alpha * y)) / (y @ s)  # Oren-Luenberger scaled Hessian guess
    b_new = b - torch.outer(b @ s, b @ s) / (s @ b @ s) + torch.outer(y, y) / (y @ s)
    assert torch.allclose(update_diagonal(alpha, s, y), 1 / b_new.diagonal(), rtol=1e-12)


def test_sampler_log_q_and_law_match_the_dense_normal(generator):
    d, j = 7, 3
    s, y = _pairs(d, j, generator)
    alpha = torch.rand(d, generator=generator) + 0.5
    theta, grad = torch.randn(d, generator=generator), torch.randn(d, generator=generator)
    approx = _approximation(theta, grad, alpha, s, y)
    beta, gamma = inverse_hessian_factors(alpha, s, y)
    cov = torch.diag(alpha) + beta @ gamma @ beta.T
    assert torch.allclose(approx.covariance(), cov, atol=1e-12)
    assert torch.allclose(approx.loc, theta - cov @ grad, atol=1e-12)
    n = 20000
    x, log_q = approx.sample(n, generator)
    dense = vt.FullRankNormal(approx.loc, torch.linalg.cholesky(cov))
    assert torch.allclose(log_q, dense.log_prob(x), atol=1e-10)
    # Whitened draws are N(0, I): means within Z / sqrt(n), variances within Z sqrt(2 / n).
    u = torch.linalg.solve_triangular(dense.scale_tril, (x - approx.loc).T, upper=False).T
    assert u.mean(0).abs().max().item() < Z / math.sqrt(n)
    assert (u.var(0) - 1).abs().max().item() < Z * math.sqrt(2 / n)


def test_gaussian_target_mean_is_exact(generator):
    target = _gaussian(5, generator)
    init = 4 * torch.rand(5, generator=generator) - 2
    out = pathfinder(target.log_prob, init, num_elbo_draws=200, generator=generator)
    sd = target.variance.sqrt()
    # mu_l = theta_l - H_l grad V(theta_l) is the mean wherever the gradient has vanished; L-BFGS stops
    # at a relative decrease of 1e-13, which leaves the iterate ~1e-6 sd from the mode.
    assert ((out.q.loc - target.loc).abs() / sd).max().item() < 1e-4
    assert out.elbo.shape == (out.path.shape[0] - 1,) and 1 <= out.best <= out.elbo.shape[0]
    assert out.draws.shape == (1000, 5) and out.log_p.shape == out.log_q.shape == (1000,)
    assert torch.allclose(out.log_p, target.log_prob(out.draws), atol=1e-10)
    assert torch.isfinite(out.khat) and out.num_evals > out.path.shape[0]


def test_gaussian_target_covariance_is_exact_once_the_history_holds_d_conjugate_pairs(generator):
    d = 5
    target = _gaussian(d, generator)
    init = 4 * torch.rand(d, generator=generator) - 2
    # An exact line search makes the L-BFGS pairs conjugate, so after D of them the compact
    # inverse Hessian is the target covariance (BFGS's quadratic termination).  That iterate's
    # ELBO estimate is log Z = 0 with zero variance; with 1000 draws no earlier iterate (whose
    # KL is at least 1e-2 here) comes near it.
    out = pathfinder(target.log_prob, init, history=d, line_search_c2=1e-3, num_elbo_draws=1000, generator=generator)
    assert out.best == d
    assert torch.allclose(out.q.loc, target.loc, atol=1e-10)
    assert torch.allclose(out.q.covariance_matrix, target.covariance_matrix, atol=1e-10)
    assert abs(out.elbo[out.best - 1].item()) < 1e-10
    assert torch.allclose(out.log_p, out.log_q, atol=1e-10)  # equal importance weights, up to rounding


def test_multipath_resampling_gives_valid_weighted_draws(generator):
    d = 3
    target = _gaussian(d, generator)
    inits = 4 * torch.rand(4, d, generator=generator) - 2
    out = multipath_pathfinder(target.log_prob, inits, num_draws=2000, draws_per_path=500, generator=generator)
    assert len(out.paths) == 4
    assert out.log_w.shape == out.smoothed_log_w.shape == (2000,)
    assert bool(torch.isfinite(out.log_w).all()) and bool(torch.isfinite(out.smoothed_log_w).all())
    assert out.khat.shape == () and not math.isnan(out.khat.item())
    pooled = torch.cat([p.draws for p in out.paths])
    assert bool((out.index >= 0).all() and (out.index < 2000).all())
    assert torch.equal(out.draws, pooled[out.index])
    # Resampled means: the resampling adds the importance-sampling error, whose effective size is
    # the ESS of the smoothed weights; SE = sd * sqrt(1 / R + 1 / ESS).
    n_eff = ess(out.smoothed_log_w).item()
    se = target.variance.sqrt() * math.sqrt(1 / 2000 + 1 / n_eff)
    assert bool(((out.draws.mean(0) - target.loc).abs() <= Z * se).all())


def test_runs_on_a_model_log_density(generator):
    y = torch.tensor([2.1, 1.3, 2.8, 1.9, 2.4])

    def log_joint(p):
        prior = torch.distributions.Normal(0.0, 5.0).log_prob(p["mu"])
        prior = prior + torch.distributions.HalfNormal(2.0).log_prob(p["sigma"])
        return prior + torch.distributions.Normal(p["mu"][..., None], p["sigma"][..., None]).log_prob(y).sum(-1)

    model = Model(log_joint, {"mu": Site(), "sigma": Site(constraint=torch.distributions.constraints.positive)})
    out = pathfinder(model.log_density, model.init(), num_draws=200, generator=generator)
    assert isinstance(out.q, vt.FullRankNormal) and out.q.event_shape == (2,)
    assert abs(out.q.loc[0].item() - y.mean().item()) < 0.5  # the posterior mean of mu is near ybar


def test_bad_input_is_named():
    target = MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(TypeError, match="log_prob"):
        pathfinder("density", torch.zeros(2))
    with pytest.raises(TypeError, match="init"):
        pathfinder(target.log_prob, [0.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        pathfinder(target.log_prob, torch.zeros(3, 2))
    with pytest.raises(ValueError, match="history"):
        pathfinder(target.log_prob, torch.ones(2), history=0)
    with pytest.raises(ValueError, match="num_draws"):
        pathfinder(target.log_prob, torch.ones(2), num_draws=1.5)
    with pytest.raises(ValueError, match="line_search_c2"):
        pathfinder(target.log_prob, torch.ones(2), line_search_c2=1.0)
    with pytest.raises(ValueError, match="not finite at the start"):
        pathfinder(lambda x: torch.full(x.shape[:-1], -math.inf) + 0 * x.sum(-1), torch.ones(2))
    with pytest.raises(ValueError, match="no step"):
        pathfinder(target.log_prob, torch.zeros(2))  # the start is the mode
    with pytest.raises(ValueError, match="inits"):
        multipath_pathfinder(target.log_prob, torch.ones(2))
    with pytest.raises(ValueError, match=r"\[n\]"):
        pathfinder(lambda x: -x.pow(2).sum(-1, keepdim=True), torch.ones(2))
