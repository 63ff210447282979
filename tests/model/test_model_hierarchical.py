"""Hierarchical models on minibatches of groups: the structured guide reaches the exact posterior
of a Gaussian hierarchy, and the subsampled bound is an unbiased estimate of the full ELBO."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import HalfNormal, Normal, constraints

import vitorch as vt
from vitorch.model import HierarchicalModel, HierarchicalVI, Site, StructuredGuide

from conftest import Z

N, PER_GROUP, SIGMA, TAU, PRIOR_SD = 24, 3, 1.0, 0.8, 3.0


def _data():
    g = torch.Generator().manual_seed(0)
    theta = 1.5 + TAU * torch.randn(N, generator=g)
    return theta.unsqueeze(-1) + SIGMA * torch.randn(N, PER_GROUP, generator=g)  # [N, 3]


def _model(y):
    def local_log_joint(pg, pl, batch):
        idx, y_b = batch
        prior = Normal(pg["mu"].unsqueeze(-1), TAU).log_prob(pl["theta"])  # [K, B]
        return prior + Normal(pl["theta"].unsqueeze(-1), SIGMA).log_prob(y_b).sum(-1)

    return HierarchicalModel(
        lambda pg: Normal(0.0, PRIOR_SD).log_prob(pg["mu"]), local_log_joint, {"mu": Site()}, {"theta": Site()}, N
    )


def _exact(y):
    """Mean and covariance of (mu, theta_1..N): a Gaussian with precision P and P m = b."""
    P = torch.zeros(N + 1, N + 1)
    P[0, 0] = 1 / PRIOR_SD**2 + N / TAU**2
    P[0, 1:] = P[1:, 0] = -1 / TAU**2
    P[1:, 1:] = torch.eye(N) * (1 / TAU**2 + PER_GROUP / SIGMA**2)
    b = torch.cat([torch.zeros(1), y.sum(-1) / SIGMA**2])
    cov = torch.linalg.inv(P)
    return cov @ b, cov


def test_structured_guide_reaches_the_exact_posterior_on_minibatches():
    y = _data()
    model = _model(y)
    guide = StructuredGuide(model)
    vi = HierarchicalVI(model, guide, num_particles=4)
    steps = 600
    vt.fit(
        vi,
        (torch.arange(N), y),
        steps=steps,
        lr=0.05,
        batch_size=8,
        seed=0,
        progress=False,
        scheduler=lambda opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps),
    )
    mean, cov = _exact(y)
    sd = cov.diagonal().sqrt()
    draws = vi.sample(20_000)
    q = torch.cat([draws["mu"].unsqueeze(-1), draws["theta"]], -1)  # [S, N + 1]
    # Optimization error, not Monte Carlo: the family contains the posterior; 0.1 sd of slack
    # covers the annealed Adam's last steps and the 20 000 draws' error (0.007 sd for a mean).
    assert ((q.mean(0) - mean).abs() / sd).max() < 0.1
    assert ((q.std(0) / sd) - 1).abs().max() < 0.1
    corr_q = torch.corrcoef(q[:, :2].T)[0, 1]
    corr = cov[0, 1] / (sd[0] * sd[1])
    assert abs(corr_q - corr) < 0.1


def test_subsampled_bound_is_unbiased_for_the_full_elbo():
    y = _data()
    model = _model(y)
    guide = StructuredGuide(model, init_scale=0.5)
    with torch.no_grad():
        for p in guide.parameters():
            p.add_(0.2 * torch.randn_like(p))
    vi = HierarchicalVI(model, guide, num_particles=1)
    reps = 400
    with torch.no_grad():
        full = torch.stack([N * vi((torch.arange(N), y)).bound.mean() for _ in range(reps)])
        sub = []
        for _ in range(reps):
            idx = torch.randperm(N)[:6]
            sub.append(N * vi((idx, y[idx])).bound.mean())
        sub = torch.stack(sub)
    se = math.sqrt(full.var().item() / reps + sub.var().item() / reps)
    assert abs(full.mean().item() - sub.mean().item()) <= Z * se


def test_constrained_globals_and_stl_run():
    y = _data()

    def local_log_joint(pg, pl, batch):
        _, y_b = batch
        prior = Normal(pg["mu"].unsqueeze(-1), pg["tau"].unsqueeze(-1)).log_prob(pl["theta"])
        return prior + Normal(pl["theta"].unsqueeze(-1), SIGMA).log_prob(y_b).sum(-1)

    def prior(pg):
        return Normal(0.0, PRIOR_SD).log_prob(pg["mu"]) + HalfNormal(2.0).log_prob(pg["tau"])

    model = HierarchicalModel(
        prior, local_log_joint, {"mu": Site(), "tau": Site(constraint=constraints.positive)}, {"theta": Site()}, N
    )
    for stl in (True, False):
        vi = HierarchicalVI(model, StructuredGuide(model), num_particles=2, stl=stl)
        history = vt.fit(vi, (torch.arange(N), y), steps=30, batch_size=8, progress=False)
        assert all(math.isfinite(r["bound"]) for r in history.steps)
    draws = vi.sample(10)
    assert draws["tau"].shape == (10,) and draws["theta"].shape == (10, N) and bool((draws["tau"] > 0).all())


def test_bad_input():
    y = _data()
    with pytest.raises(ValueError, match="num_groups"):
        HierarchicalModel(lambda p: p["a"], lambda g, l, b: l["b"], {"a": Site()}, {"b": Site()}, 0)
    with pytest.raises(ValueError, match="used twice"):
        HierarchicalModel(lambda p: p["a"], lambda g, l, b: l["a"], {"a": Site()}, {"a": Site()}, 3)
    model = _model(y)
    vi = HierarchicalVI(model, StructuredGuide(model))
    with pytest.raises(ValueError, match="group indices"):
        vi((y[:, 0], y))
    wrong = HierarchicalModel(
        lambda p: Normal(0.0, 1.0).log_prob(p["mu"]),
        lambda g, l, b: l["theta"].sum(-1),
        {"mu": Site()},
        {"theta": Site()},
        N,
    )
    with pytest.raises(ValueError, match=r"\[\*sample, B\]"):
        HierarchicalVI(wrong, StructuredGuide(wrong))((torch.arange(4), y[:4]))
    with pytest.raises(TypeError, match="HierarchicalModel"):
        StructuredGuide(object())
