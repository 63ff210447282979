"""The fused dense regression loss against its autograd specification, forward and backward."""

from __future__ import annotations

import pytest
import torch

from vitorch.models.last_layer import Dense, DensePrecision, VBLLRegression
from vitorch.models.last_layer._fused import dense_regression_loss, reference_loss


def _inputs(b, d, o):
    shapes = [(b, d), (b, o), (o, d), (o, d, d), (o,)]
    scales = [1.0, 1.0, 1.0, 0.3, 0.3]
    return [(s * torch.randn(shape)).requires_grad_(True) for shape, s in zip(shapes, scales)]


@pytest.mark.parametrize("b, d, o", [(1, 1, 1), (7, 4, 1), (5, 3, 3), (32, 16, 2)])
@pytest.mark.parametrize("noise_prior", [(0.0, 0.0), (2.5, 0.1)])
def test_fused_matches_reference_forward_and_backward(b, d, o, noise_prior):
    args = _inputs(b, d, o)
    consts = (0.7, 50, *noise_prior)
    upstream = torch.randn(())
    ref = reference_loss(*args, *consts)
    fused = dense_regression_loss(*args, *consts)
    # float64 throughout; the two differ only in summation order
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad(ref * upstream, args)
    g_fused = torch.autograd.grad(fused * upstream, args)
    for name, a, r in zip(["phi", "y", "mean", "raw", "log_v"], g_fused, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")


def test_fused_gradcheck():
    args = _inputs(4, 3, 2)
    assert torch.autograd.gradcheck(lambda *t: dense_regression_loss(*t, 0.7, 50, 2.5, 0.1), args)


@pytest.mark.parametrize("learn_noise", [False, True])
def test_head_loss_takes_the_fused_path_and_agrees_with_the_generic_one(learn_noise):
    phi, y = torch.randn(9, 4), torch.randn(9, 2)
    dense = VBLLRegression(4, 2, prior_scale=0.8, noise_variance=0.6, learn_noise=learn_noise, covariance=Dense)
    prec = VBLLRegression(4, 2, prior_scale=0.8, noise_variance=0.6, learn_noise=learn_noise, covariance=DensePrecision)
    with torch.no_grad():
        dense.weights.mean.normal_()
        dense.weights.raw.normal_(0, 0.2)
    cov = dense.weights.covariance().detach()
    prec.weights.set_posterior(dense.weights.mean.detach(), torch.linalg.inv(cov))
    torch.testing.assert_close(dense.loss(phi, y, 40), prec.loss(phi, y, 40), rtol=1e-10, atol=0)
    # on the full data set (batch = num_data) the loss is the negated objective over N
    torch.testing.assert_close(dense.loss(phi, y, 9), -(dense.elbo(phi, y) + dense.noise_log_prior()) / 9)
