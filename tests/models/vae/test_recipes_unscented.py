"""The Unscented Autoencoder: its reconstruction term is the closed form on a linear-Gaussian decoder.

For ``p(x | z) = N(x; W z + b, sigma^2 I)`` and ``q = N(m, diag(s^2))``,

    E_q[log p(x | z)] = log N(x; W m + b, sigma^2 I) - sum_o (W diag(s^2) W^T)_oo / (2 sigma^2),

a quadratic in z, which the 2D + 1 sigma points integrate exactly (Julier & Uhlmann, 1997):
the UAE's reconstruction term must equal it to rounding, in value and in gradient (float64).
The W2 term is ``||m||^2 + ||s - 1||^2`` (Janjoš et al., 2023).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vitorch import unscented
from vitorch.models import vae

D, O, B, SIGMA = 3, 5, 7, 0.7


def _model(**kw) -> vae.UnscentedAE:
    torch.manual_seed(0)
    encoder = vae.GaussianEncoder(None, O, D, hidden=(6,))
    model = vae.UnscentedAE(encoder, nn.Linear(D, O), vae.Gaussian(scale=SIGMA), D, **kw)
    return model.double()


def _data():
    return torch.randn(B, O, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _closed_form(x, q, weight, bias):
    m, var = q.mean, q.variance
    resid = x - (m @ weight.T + bias)
    quad = var @ weight.pow(2).T  # diag(W S W^T) [B, O]
    return (-0.5 * (resid.pow(2) + quad) / SIGMA**2 - math.log(SIGMA) - 0.5 * math.log(2 * math.pi)).sum(-1)


def test_reconstruction_equals_closed_form_value_and_gradient():
    model, x = _model(), _data()
    q = model.encoder(x)
    recon = model.reconstruction(x, q)[0]
    exact = _closed_form(x, q, model.decoder.weight, model.decoder.bias)
    # Rounding of a 2D+1-term weighted sum of O-term sums in float64.
    torch.testing.assert_close(recon, exact, rtol=1e-10, atol=1e-10)
    params = list(model.parameters())
    g_ut = torch.autograd.grad(recon.sum(), params)
    g_cf = torch.autograd.grad(
        _closed_form(x, model.encoder(x), model.decoder.weight, model.decoder.bias).sum(), params
    )
    for a, b in zip(g_ut, g_cf):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


def test_loss_is_reconstruction_minus_beta_w2_and_bound_is_exact_elbo():
    model, x = _model(beta=0.3), _data()
    out = model(x)
    q = model.encoder(x)
    exact = _closed_form(x, q, model.decoder.weight, model.decoder.bias)
    w2 = q.mean.pow(2).sum(-1) + (q.stddev - 1).pow(2).sum(-1)
    torch.testing.assert_close(out.loss, -(exact - 0.3 * w2).mean(), rtol=1e-10, atol=1e-10)
    kl = torch.distributions.kl_divergence(q, model.prior(x))
    torch.testing.assert_close(out.bound, exact - kl, rtol=1e-10, atol=1e-10)  # the exact ELBO on this model
    assert out.log_w.shape == (2 * D + 1, B) and out.z.shape == (2 * D + 1, B, D)


def test_gradient_has_zero_variance():
    model, x = _model(), _data()
    grads = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model.zero_grad()
        model(x).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.equal(grads[0], grads[1])


def test_random_sigma_points_are_sigma_points():
    model, x = _model(num_sigma_points=4), _data()
    q = model.encoder(x)
    torch.manual_seed(3)
    _, _, z = model.reconstruction(x, q)
    points, _ = unscented.sigma_points(q)
    # every picked point is one of the datum's 2D + 1 sigma points
    dist = (z.unsqueeze(1) - points.unsqueeze(0)).abs().amax(-1)  # [4, 2D+1, B]
    assert bool((dist.amin(1) < 1e-12).all())


def test_bad_input():
    encoder = vae.GaussianEncoder(None, O, D)
    with pytest.raises(ValueError, match="beta"):
        vae.UnscentedAE(encoder, nn.Linear(D, O), vae.Gaussian(scale=1.0), D, beta=-1.0)
    with pytest.raises(ValueError, match="num_sigma_points"):
        vae.UnscentedAE(encoder, nn.Linear(D, O), vae.Gaussian(scale=1.0), D, num_sigma_points=0)
    with pytest.raises(ValueError, match="prior"):
        vae.UnscentedAE(
            encoder, nn.Linear(D, O), vae.Gaussian(scale=1.0), D, prior=torch.distributions.Normal(0.0, 1.0)
        )
