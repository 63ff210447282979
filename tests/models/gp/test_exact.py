"""Exact GP: marginal likelihood against a dense MultivariateNormal, predictions against the dense formulas."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import MultivariateNormal

from vitorch.models import gp


def _data(n=30, d=2):
    x = torch.rand(n, d) * 4
    y = torch.sin(x).sum(-1) + 0.1 * torch.randn(n)
    return x, y


@pytest.mark.parametrize(
    "make_kernel",
    [
        lambda: gp.RBF(torch.tensor([0.6, 1.4]), 1.3),
        lambda: gp.Matern32(0.9, 0.7) + gp.Linear(0.2),
        lambda: gp.Periodic(1.0, 1.0, period=2.0) * gp.RBF(2.0),
    ],
)
def test_log_marginal_likelihood_equals_dense_mvn(make_kernel):
    x, y = _data()
    k = make_kernel()
    mean = gp.ConstantMean(0.3)
    model = gp.ExactGP(k, noise=0.05, mean=mean)
    with torch.no_grad():
        want = MultivariateNormal(torch.full((30,), 0.3), k(x) + 0.05 * torch.eye(30)).log_prob(y)
        got = model.log_marginal_likelihood(x, y)
    # both are one Cholesky of the same matrix in float64: agreement to ~1e-12 relative
    assert torch.allclose(got, want, rtol=1e-10)


def test_predictions_equal_dense_formulas():
    x, y = _data()
    xs = torch.rand(8, 2) * 4
    k = gp.RBF(0.8, 1.1)
    model = gp.ExactGP(k, noise=0.1)
    with torch.no_grad():
        mean, cov = model.predict(x, y, xs, full_cov=True)
        _, var = model.predict(x, y, xs)
        kxx = k(x) + 0.1 * torch.eye(30)
        want_mean = k(xs, x) @ torch.linalg.solve(kxx, y)
        want_cov = k(xs) - k(xs, x) @ torch.linalg.solve(kxx, k(x, xs))
        ymean, yvar = model.predict_y(x, y, xs)
    assert torch.allclose(mean, want_mean, rtol=1e-9, atol=1e-10)
    assert torch.allclose(cov, want_cov, rtol=1e-9, atol=1e-10)
    assert torch.allclose(var, want_cov.diagonal(), rtol=1e-9, atol=1e-10)
    assert torch.allclose(yvar, var + 0.1) and torch.equal(ymean, mean)


def test_hyperparameters_get_gradients_and_float32_works():
    x, y = _data()
    model = gp.ExactGP(gp.RBF(torch.ones(2)), noise=0.1)
    model.log_marginal_likelihood(x, y).backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    lml64 = gp.ExactGP(gp.RBF(torch.ones(2)), noise=0.1).log_marginal_likelihood(x, y).detach()
    torch.set_default_dtype(torch.float32)  # the fixture restores float64
    m32 = gp.ExactGP(gp.RBF(torch.ones(2)), noise=0.1)
    with torch.no_grad():
        lml32 = m32.log_marginal_likelihood(x.float(), y.float())
    # float32 rounding through a 30 x 30 Cholesky: ~1e-5 relative is ample
    assert lml32.dtype == torch.float32 and abs(float(lml32) - float(lml64)) < 1e-4 * abs(float(lml64))


def test_nan_inputs_and_bad_shapes_raise():
    x, y = _data()
    model = gp.ExactGP(gp.RBF(), noise=0.1)
    xn = x.clone()
    xn[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X must be finite"):
        model.log_marginal_likelihood(xn, y)
    yn = y.clone()
    yn[0] = float("inf")
    with pytest.raises(ValueError, match="y must be finite"):
        model.log_marginal_likelihood(x, yn)
    with pytest.raises(ValueError, match=r"y must have shape \[N\] = \[30\]"):
        model.log_marginal_likelihood(x, y[:5])
    with pytest.raises(ValueError, match="noise must be positive"):
        gp.ExactGP(gp.RBF(), noise=-0.1)


def test_forward_is_the_log_marginal_likelihood_per_datum_and_bad_kinds_raise():
    x, y = _data()
    model = gp.ExactGP(gp.RBF(torch.ones(2)), noise=0.1)
    out = model((x, y))
    lml = model.log_marginal_likelihood(x, y)
    assert out.bound.shape == (30,) and out.log_w is None
    torch.testing.assert_close(out.bound, (lml / 30).detach().expand(30), rtol=0, atol=0)
    torch.testing.assert_close(out.loss, -lml / 30, rtol=0, atol=0)
    with pytest.raises(TypeError, match="X must be a torch.Tensor; got numpy.ndarray"):
        model((x.numpy(), y))
    with pytest.raises(TypeError, match="X has dtype torch.float32 but the model computes in torch.float64"):
        model.predict(x, y, x.float())
    with pytest.raises(ValueError, match=r"lengthscale has shape \(2,\).*X has D = 3"):
        model((torch.rand(30, 3), y))
