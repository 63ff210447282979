"""Likelihoods against torch.distributions, network shapes, and the VAE's bad-input checks."""

from __future__ import annotations

import re

import pytest
import torch
from torch import distributions as td
from torch import nn

import vitorch as vt
from vitorch.models import vae


def test_bernoulli_matches_torch():
    logits, x = torch.randn(3, 4, 6), torch.bernoulli(torch.full((4, 6), 0.3))
    expected = td.Bernoulli(logits=logits).log_prob(x).sum(-1)
    torch.testing.assert_close(vae.Bernoulli().log_prob(logits, x), expected)
    assert vae.Bernoulli().mean(logits).shape == (3, 4, 6)


@pytest.mark.parametrize("mode", ["fixed", "shared", "decoder"])
def test_gaussian_matches_torch(mode):
    x = torch.randn(4, 2, 3)
    if mode == "fixed":
        lik, params = vae.Gaussian(scale=0.7), torch.randn(5, 4, 2, 3)
        loc, scale = params, torch.tensor(0.7)
    elif mode == "shared":
        lik, params = vae.Gaussian(event_shape=(2, 3)), torch.randn(5, 4, 2, 3)
        with torch.no_grad():
            lik.raw_scale.copy_(torch.randn(2, 3))
        loc, scale = params, nn.functional.softplus(lik.raw_scale) + lik.min_scale
    else:
        lik, params = vae.Gaussian(learned="decoder"), torch.randn(5, 4, 2, 3, 2)
        loc, scale = params[..., 0], nn.functional.softplus(params[..., 1]) + lik.min_scale
    expected = td.Normal(loc, scale).log_prob(x).sum((-2, -1))
    torch.testing.assert_close(lik.log_prob(params, x), expected)
    assert lik.sample(params).shape == (5, 4, 2, 3)


def test_categorical_and_poisson_match_torch():
    logits, x = torch.randn(3, 4, 6, 5), torch.randint(0, 5, (4, 6)).double()
    expected = td.Categorical(logits=logits).log_prob(x.long()).sum(-1)
    torch.testing.assert_close(vae.Categorical(5).log_prob(logits, x), expected)
    torch.testing.assert_close(vae.Categorical(5).mean(logits), (logits.softmax(-1) * torch.arange(5.0)).sum(-1))
    log_rate, counts = torch.randn(3, 4, 6), torch.poisson(torch.full((4, 6), 2.0))
    expected = td.Poisson(log_rate.exp()).log_prob(counts).sum(-1)
    torch.testing.assert_close(vae.Poisson().log_prob(log_rate, counts), expected)


@pytest.mark.parametrize("p", [1, 3])
def test_decoder_shapes(p):
    z = torch.randn(2, 5, 4)
    assert vae.MLPDecoder(4, (10,), (8,), p)(z).shape == (2, 5, 10) + ((p,) if p > 1 else ())
    assert vae.ConvDecoder(4, (1, 8, 8), p)(z).shape == (2, 5, 1, 8, 8) + ((p,) if p > 1 else ())
    assert vae.ConvDecoder(4, (1, 8, 8), p, event_shape=(64,))(z).shape == (2, 5, 64) + ((p,) if p > 1 else ())


def test_conv_decoder_keeps_pixels_apart():
    # Entry (c, h, w) of output channel group p must be the P-th parameter of that pixel:
    # compare with the unpermuted convolution output.
    dec = vae.ConvDecoder(3, (2, 4, 4), params_per_entry=3)
    z = torch.randn(5, 3)
    raw = dec.net(dec.fc(z).reshape(-1, *dec.start))  # [5, C*P, H, W], channel = c*P + p
    out = dec(z)  # [5, C, H, W, P]
    torch.testing.assert_close(out[:, 1, 2, 3, 2], raw[:, 1 * 3 + 2, 2, 3])


@pytest.mark.parametrize("arch", ["mlp", "conv"])
@pytest.mark.parametrize("K", [1, 3])
def test_forward_shapes(arch, K):
    x = torch.bernoulli(torch.full((6, 64), 0.4))
    kw = dict(objective=vt.objectives.iwae, num_particles=K, latent_dim=5)
    model = vae.VAE.mlp(64, hidden=(16,), **kw) if arch == "mlp" else vae.VAE.conv((1, 8, 8), features=16, **kw)
    out = model(x)
    assert out.loss.shape == () and out.bound.shape == (6,) and out.log_w.shape == (K, 6) and out.z.shape == (K, 6, 5)
    # A labelled (x, y) batch reads x.
    torch.manual_seed(0)
    a = model((x, torch.zeros(6))).bound
    torch.manual_seed(0)
    torch.testing.assert_close(a, model(x).bound)
    assert model.sample(7).shape == (7, 64) and model.reconstruct(x).shape == (6, 64)


def test_unflattened_images():
    x = torch.bernoulli(torch.full((4, 1, 8, 8), 0.4))
    model = vae.VAE.conv((1, 8, 8), latent_dim=3, features=8, flat_data=False)
    assert model(x).bound.shape == (4,) and model.sample(2).shape == (2, 1, 8, 8)


@pytest.mark.parametrize(
    "kwargs, messages",
    [
        (dict(objective=vt.objectives.iwae, kl_weight=2.0), ["kl_weight != 1 and analytic_kl"]),
        (
            dict(analytic_kl=True, estimator=vt.estimators.stl, objective=vt.objectives.iwae),
            ["analytic_kl needs the reparam estimator", "objectives.elbo"],
        ),
        (dict(kl_weight=-1.0), ["kl_weight \\(beta\\) must be finite"]),
        (dict(num_particles=0), ["num_particles \\(K\\) must be an integer >= 1"]),
        (dict(objective=vt.objectives.miwae(3), num_particles=4), ["M=3 does not divide K=4"]),
        (dict(mmd_weight=float("inf"), mmd_kernel="gauss"), ["mmd_weight must be", "mmd_kernel must be"]),
    ],
)
def test_bad_set_up_lists_every_reason(kwargs, messages):
    with pytest.raises(ValueError) as err:
        vae.VAE.mlp(8, latent_dim=2, hidden=(4,), **kwargs)
    for m in messages:
        assert re.search(m, str(err.value)), (m, str(err.value))


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: vae.Gaussian(scale=0.0), "scale must be positive"),
        (lambda: vae.Gaussian(), "needs event_shape"),
        (lambda: vae.Gaussian(learned="pixel"), "learned must be"),
        (lambda: vae.Categorical(1), "num_classes must be an integer >= 2"),
        (lambda: vae.ConvDecoder(2, (1, 10, 10)), "multiples of 4"),
        (lambda: vae.MLPDecoder(0, (4,)), "latent_dim must be"),
        (lambda: vae.VAE.mlp(8, posterior="planar"), "posterior must be"),
        (lambda: vae.VAE(nn.Identity(), nn.Identity()), "latent_dim must be"),
        (lambda: vae.iwae_log_likelihood(vae.vae(4, latent_dim=2), torch.zeros(3, 4), num_particles=0), "num_part"),
    ],
)
def test_bad_arguments(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_estimator_incompatibility_is_reported_at_set_up():
    model = vae.iwae(8, K=4, latent_dim=2, hidden=(4,), estimator=vt.estimators.stl)
    with pytest.raises(ValueError, match="stl is unbiased only for"):
        model.check(torch.zeros(3, 8))
    # An RSVI Dirichlet needs its acceptance correction, which DReG does not carry.
    model = vae.dirichlet_vae(8, latent_dim=3, hidden=(4,), estimator=vt.estimators.dreg)
    with pytest.raises(ValueError, match="dreg assumes an exact reparameterization; RSVIDirichlet"):
        model.check(torch.zeros(3, 8))


def test_dirichlet_latents_live_on_the_simplex():
    model = vae.dirichlet_vae(8, latent_dim=3, hidden=(4,), prior_concentration=0.5)
    out = model(torch.bernoulli(torch.full((5, 8), 0.5)))
    assert out.z.shape == (1, 5, 3) and bool((out.z > 0).all())
    torch.testing.assert_close(out.z.sum(-1), torch.ones(1, 5))
    z = torch.distributions.Dirichlet(torch.full((3,), 0.7)).sample((4,))
    expected = torch.distributions.Dirichlet(torch.full((3,), 0.5)).log_prob(z)
    torch.testing.assert_close(model.log_prior(z), expected)
    assert model.sample(2).shape == (2, 8)


def test_prior_must_be_a_distribution():
    with pytest.raises(ValueError, match="prior must have log_prob and sample"):
        vae.vae(8, latent_dim=2, hidden=(4,), prior=object())


def test_predict_is_the_expected_reconstruction():
    # predict(x, K) = (1/K) sum_k E[x | z_k], z_k ~ q(z | x): for a Bernoulli decoder the mean pixel probabilities.
    model = vae.VAE.mlp(12, 2, (5,))
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    torch.manual_seed(0)
    got = model.predict(x, num_particles=3)
    torch.manual_seed(0)
    z = model.encoder(x).sample((3,))
    torch.testing.assert_close(got, torch.sigmoid(model.decoder(z)).mean(0), rtol=0, atol=0)
    assert got.shape == x.shape and not got.requires_grad
    torch.manual_seed(1)
    a = model.predict((x, torch.zeros(4)))  # an (x, y) batch reads x
    torch.manual_seed(1)
    torch.testing.assert_close(a, model.predict(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="num_particles"):
        model.predict(x, num_particles=0)
