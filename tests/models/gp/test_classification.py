"""Non-Gaussian SVGP trains: a GP classifier beats the constant predictor on a held-out split."""

from __future__ import annotations

import pytest
import torch

from vitorch.models import gp

from conftest import Z


def _split(n=400):
    x = torch.rand(n, 2) * 6 - 3
    logits = 3 * torch.sin(x[:, 0]) + x[:, 1]
    y = torch.bernoulli(torch.sigmoid(logits))
    return x[: n // 2], y[: n // 2], x[n // 2 :], y[n // 2 :]


@pytest.mark.parametrize("likelihood", [gp.BernoulliLogit, gp.BernoulliProbit])
def test_classifier_beats_constant_predictor_on_held_out_data(likelihood):
    x, y, xt, yt = _split()
    model = gp.SVGP(gp.RBF(torch.ones(2)), gp.kmeans(x, 16), likelihood(), num_data=len(x))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(150):
        opt.zero_grad()
        model((x, y)).loss.backward()
        opt.step()
    with torch.no_grad():
        lp_model = model.log_predictive(xt, yt)
        rate = y.mean()
        lp_const = torch.where(yt == 1, rate.log(), (1 - rate).log())
        p = model.predict_proba(xt)
    diff = lp_model - lp_const  # per held-out point; the model must be better on average
    se = diff.std() / len(diff) ** 0.5
    assert float(diff.mean()) > Z * float(se)
    acc = ((p > 0.5).double() == yt).double().mean()
    majority = torch.maximum(yt.mean(), 1 - yt.mean())
    se_acc = (acc * (1 - acc) / len(yt)).sqrt()  # binomial standard error of the accuracy
    assert float(acc - majority) > Z * float(se_acc)
    assert abs(float(gp.nlpd(lp_model)) + float(lp_model.mean())) < 1e-12


def test_poisson_and_student_t_models_train_and_predict():
    x = torch.rand(120, 1) * 4
    counts = torch.poisson(torch.exp(torch.sin(2 * x[:, 0])))
    pois = gp.SVGP(gp.Matern52(0.7), x[:10], gp.Poisson(), num_data=120)
    noisy = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(120)
    noisy[::17] += 5.0  # outliers that a Student-t shrugs off
    st = gp.SVGP(gp.RBF(0.7), x[:10], gp.StudentT(df=3.0, scale=0.2), num_data=120)
    for model, y in ((pois, counts), (st, noisy)):
        opt = torch.optim.Adam(model.parameters(), lr=0.05)
        first = float(model.full_data_elbo(x, y).detach())
        for _ in range(60):
            opt.zero_grad()
            (-model.full_data_elbo(x, y)).backward()
            opt.step()
        with torch.no_grad():
            assert float(model.full_data_elbo(x, y)) > first
            mean, var = model.predict_y(x)
            assert bool(torch.isfinite(mean).all() and (var > 0).all())
    with torch.no_grad():
        f, _ = st.predict(x)
    clean = torch.ones(120, dtype=torch.bool)
    clean[::17] = False
    # the robust fit tracks the clean signal: error well below the outlier size 5 / 17 per point
    assert float((f[clean] - torch.sin(2 * x[clean, 0])).abs().mean()) < 0.2


def test_metrics():
    y = torch.tensor([0.0, 1.0, 2.0])
    assert torch.allclose(gp.rmse(y, y + 0.5), torch.tensor(0.5, dtype=y.dtype))
    var = torch.tensor([1.0, 0.5, 2.0])
    want = -torch.distributions.Normal(y + 0.1, var.sqrt()).log_prob(y).mean()
    assert torch.allclose(gp.gaussian_nlpd(y, y + 0.1, var), want)
    with pytest.raises(ValueError, match="var must be positive"):
        gp.gaussian_nlpd(y, y, torch.zeros(3))
    with pytest.raises(ValueError, match="shapes differ"):
        gp.rmse(y, y[:2])
