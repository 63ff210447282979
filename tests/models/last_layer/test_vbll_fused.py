"""The fused dense regression loss against its autograd specification, forward and backward."""

from __future__ import annotations

import pytest
import torch

from vitorch.models.last_layer import Dense, DensePrecision, VBLLRegression
from vitorch.models.last_layer._fused import dense_regression_loss, reference_loss


def _inputs(b, d, o, learned):
    """``[phi, y, packed, log_v]``: the noise inside ``packed`` (``log_v = None``) or apart."""
    phi, y = torch.randn(b, d), torch.randn(b, o)
    raw, mean, log_v = 0.3 * torch.randn(o, d, d), torch.randn(o, d), 0.3 * torch.randn(o)
    # the strict upper triangle of raw is unused storage; fill it, to show it is ignored
    matrix = torch.cat([raw, mean[..., None]], -1)  # [F | m], the layout of vitorch's Dense posterior
    packed = torch.cat([matrix.flatten(1)] + ([log_v[:, None]] if learned else []), -1)
    args = [phi, y, packed] + ([] if learned else [log_v])
    args = [a.requires_grad_(True) for a in args]
    return args + [None] if learned else args


@pytest.mark.parametrize("b, d, o", [(1, 1, 1), (7, 4, 1), (5, 3, 3), (32, 16, 2)])
@pytest.mark.parametrize("noise_prior", [(0.0, 0.0), (2.5, 0.1)])
@pytest.mark.parametrize("learned", [True, False])
def test_fused_matches_reference_forward_and_backward(b, d, o, noise_prior, learned):
    args = _inputs(b, d, o, learned)
    consts = (0.7, 50, *noise_prior)
    upstream = torch.randn(())
    ref = reference_loss(*args, *consts)
    fused = dense_regression_loss(*args, *consts)
    # float64 throughout; the two differ only in summation order
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    wrt = [a for a in args if a is not None]
    g_ref = torch.autograd.grad(ref * upstream, wrt)
    g_fused = torch.autograd.grad(fused * upstream, wrt)
    for name, a, r in zip(["phi", "y", "packed", "log_v"], g_fused, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    # the unused upper triangle of the factor gets an exactly zero gradient
    upper = torch.ones(d, d).triu(1).bool()
    assert bool((g_fused[2][:, : d * (d + 1)].view(o, d, d + 1)[:, :, :d][:, upper] == 0).all())


@pytest.mark.parametrize("learned", [True, False])
def test_fused_gradcheck(learned):
    args = _inputs(4, 3, 2, learned)
    wrt = [a for a in args if a is not None]

    def f(*t):
        return dense_regression_loss(*t[:3], None if learned else t[3], 0.7, 50, 2.5, 0.1)

    assert torch.autograd.gradcheck(f, wrt)


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


def test_default_head_trains_one_tensor_with_the_generic_gradient():
    phi, y = torch.randn(9, 4), torch.randn(9, 2)
    head = VBLLRegression(4, 2, prior_scale=0.8, noise_variance=0.6, learn_noise=True)
    params = dict(head.named_parameters())
    # mean, Cholesky factor and log noise variances share one tensor, written through by views
    assert list(params) == ["weights.packed"]
    with torch.no_grad():
        head.weights.mean.normal_()
        head.weights.raw.normal_(0, 0.2)
        head.log_noise_variance.copy_(torch.tensor([0.3, -0.2]))
    assert torch.equal(head.weights.packed[:, -1], torch.tensor([0.3, -0.2]))
    fused = torch.autograd.grad(head.loss(phi, y, 40), head.weights.packed)[0]
    expected, kl = head._data_terms(phi, y)  # the generic path, through the views
    generic = -(expected.mean() + (head.noise_log_prior() - kl) / 40)
    torch.testing.assert_close(fused, torch.autograd.grad(generic, head.weights.packed)[0], rtol=1e-10, atol=1e-13)
