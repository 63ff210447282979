"""Posterior: named draws with the right shapes and supports, a summary whose columns are right on
a known posterior, PSIS-corrected expectations, the evidence, predictive draws and the warnings.

Stochastic assertions compare an estimate with the truth within Z = 5.2 standard errors
(false-failure rate about 2e-7 each, TESTING.md): for a mean ``sd / sqrt(n)``, for a
standard deviation ``sd / sqrt(2 (n - 1))``, for a p-quantile ``sqrt(p (1 - p) / n) / f(q_p)``,
with ``n`` the (importance) effective sample size.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from model_cases import PRIOR_CASES
from torch.distributions import LogNormal, MultivariateNormal, Normal, constraints

import vitorch as vt
from vitorch.model import AutoFlow, AutoGuide, AutoLaplace, Model, Posterior, Site

from conftest import Z

S = 4000
LOC = torch.tensor([1.0, -2.0])
SCALE_TRIL = torch.tensor([[0.5, 0.0], [0.3, 2.0]])
LOG_LOC, LOG_SCALE = 0.4, 0.3


def _known_model():
    """theta ~ N(LOC, A A^T) and s ~ LogNormal(0.4, 0.3): Gaussian on the unconstrained space."""
    target = MultivariateNormal(LOC, scale_tril=SCALE_TRIL)

    def log_joint(p):
        return target.log_prob(p["theta"]) + LogNormal(LOG_LOC, LOG_SCALE).log_prob(p["s"])

    return Model(log_joint, {"theta": Site(shape=(2,)), "s": Site(constraint=constraints.positive)})


def _truth():
    sd = SCALE_TRIL.pow(2).sum(-1).sqrt()
    rows = {}
    for i in range(2):
        m, s = LOC[i].item(), sd[i].item()
        rows[f"theta[{i}]"] = (m, s, lambda p, m=m, s=s: m + s * Normal(0.0, 1.0).icdf(torch.tensor(p)).item(), s)
    mean = math.exp(LOG_LOC + LOG_SCALE**2 / 2)
    sd_s = math.sqrt((math.exp(LOG_SCALE**2) - 1) * math.exp(2 * LOG_LOC + LOG_SCALE**2))
    quantile = lambda p: math.exp(LOG_LOC + LOG_SCALE * Normal(0.0, 1.0).icdf(torch.tensor(p)).item())  # noqa: E731
    rows["s"] = (mean, sd_s, quantile, None)
    return rows


def _density_at(name, q, truth):
    if name == "s":
        return LogNormal(LOG_LOC, LOG_SCALE).log_prob(torch.tensor(q)).exp().item()
    m, s = truth[name][0], truth[name][1]
    return Normal(m, s).log_prob(torch.tensor(q)).exp().item()


def _check_table(table, n_eff, truth):
    assert table.columns == ("mean", "sd", "5%", "50%", "95%", "ess", "khat")
    assert table.names == ["theta[0]", "theta[1]", "s"]
    for name, (mean, sd, quantile, _) in truth.items():
        row = table[name]
        assert abs(row["mean"] - mean) <= Z * sd / math.sqrt(n_eff), name
        # The sd's error for the skewed log-normal is a little wider than the normal formula; 1.5x covers it.
        assert abs(row["sd"] - sd) <= 1.5 * Z * sd / math.sqrt(2 * (n_eff - 1)), name
        for p, col in ((0.05, "5%"), (0.5, "50%"), (0.95, "95%")):
            q = quantile(p)
            se = math.sqrt(p * (1 - p) / n_eff) / _density_at(name, q, truth)
            assert abs(row[col] - q) <= Z * se, (name, col)


def test_summary_is_right_on_a_known_posterior():
    model = _known_model()
    post = Posterior(model, AutoLaplace(model)(), S)  # Laplace is exact here: equal weights
    table = post.summary()
    _check_table(table, S, _truth())
    assert bool((table.column("ess") > 0.999 * S).all())
    assert bool((table.column("khat") < 0.5).all())
    log_z, se = post.log_evidence()
    assert abs(log_z.item()) < 1e-6 and se.item() < 1e-6  # the target is normalized and q is exact
    assert "theta[1]" in str(table) and table.to_pandas().shape == (3, 7)


def test_psis_corrects_a_shifted_guide():
    model = _known_model()
    exact = AutoLaplace(model)()
    q = vt.FullRankNormal(exact.loc + 0.1, 1.3 * exact.scale_tril)
    post = Posterior(model, q, S)
    assert post.khat < 0.5  # a wider proposal: bounded weights
    table = post.summary(weighted=True)
    n_eff = post.ess.item()
    assert n_eff < 0.95 * S
    _check_table(table, n_eff, _truth())
    expected = torch.tensor([LOC[0], LOC[1], math.exp(LOG_LOC + LOG_SCALE**2 / 2)])
    estimate = post.expect(lambda p: torch.cat([p["theta"], p["s"].unsqueeze(-1)], -1))
    sd = torch.tensor([_truth()[n][1] for n in ("theta[0]", "theta[1]", "s")])
    assert bool(((estimate - expected).abs() <= Z * sd / math.sqrt(n_eff)).all())
    plain = post.expect(lambda p: p["theta"], psis=False)
    torch.testing.assert_close(plain, post["theta"].mean(0))


@pytest.mark.parametrize("kind", ["diag", "full", "lowrank", "flow"])
def test_named_draws_have_the_right_shapes_and_supports(kind):
    names = ["positive", "simplex", "corr_cholesky", "positive_definite", "ordered_vector", "interval"]
    model = Model(lambda p: sum(PRIOR_CASES[n][1](p[n]) for n in names), {n: PRIOR_CASES[n][0] for n in names})
    guide = AutoGuide(model, kind, init_scale=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # an untrained guide: k-hat is large
        post = Posterior(model, guide(), 500)
    assert list(post) == names and len(post) == len(names)
    for n in names:
        site = model.sites[n]
        assert post[n].shape == (500, *site.shape)
        assert bool(torch.as_tensor(site.constraint.check(post[n])).all()), n
    assert post.z.shape == (500, model.dim) and post.log_w.shape == (500,)
    resampled = post.resample(100)
    assert resampled["simplex"].shape == (100, 3)


def test_predictive_and_bad_input():
    model = _known_model()
    post = Posterior(model, AutoLaplace(model)(), 300)
    y = post.predictive(lambda p: Normal(p["theta"], p["s"].unsqueeze(-1)).sample((5,)).movedim(0, 1))
    assert y.shape == (300, 5, 2)
    assert post.predictive(lambda p: p["s"], weighted=True).shape == (300,)
    with pytest.raises(ValueError, match="S = 300"):
        post.predictive(lambda p: p["s"][:10])
    with pytest.raises(ValueError, match=r"\[S = 300"):
        post.expect(lambda p: p["s"].mean())
    with pytest.raises(KeyError, match="sites are"):
        post["tau"]
    with pytest.raises(ValueError, match="event shape"):
        Posterior(model, vt.DiagNormal(torch.zeros(2), torch.ones(2)), 10)
    with pytest.raises(ValueError, match="num_samples"):
        Posterior(model, AutoLaplace(model)(), 0)
    with pytest.raises(TypeError, match="guide"):
        Posterior(model, AutoLaplace(model), 10)
    with pytest.raises(ValueError, match="quantile"):
        post.summary(probs=(0.5, 1.0))


def test_to_arviz_or_a_clear_import_error():
    model = _known_model()
    post = Posterior(model, AutoLaplace(model)(), 50)
    try:
        import arviz  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="pip install arviz"):
            post.to_arviz()
        return
    data = post.to_arviz(log_likelihood=lambda p: Normal(p["theta"], 1.0).log_prob(torch.zeros(2)))
    assert data.posterior["theta"].shape == (1, 50, 2)


def test_warnings_for_a_poor_guide_and_a_spline_wall():
    model = _known_model()
    poor = vt.FullRankNormal(torch.zeros(3), 0.05 * torch.eye(3))
    with pytest.warns(UserWarning, match="k-hat"):
        Posterior(model, poor, 1000)
    walled = AutoFlow(model, transforms=[vt.flows.MAF(3, vt.flows.RQSpline(bound=0.2))])
    with pytest.warns(UserWarning) as records:  # the untrained flow also draws a k-hat warning
        Posterior(model, walled(), 200)
    assert any("spline layer 0" in str(r.message) for r in records)
