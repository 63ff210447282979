"""The silent-gradient VAE: the encoder's gradient is lam * silent + (1 - lam) * stochastic, lam annealed 1 -> 0.

Oracles (deterministic, float64):

* at ``lam = 1`` the encoder's gradient is the gradient of the linear decoder's closed-form
  ELBO alone (`vitorch.silent.loss`), so it does not change with the random draw;
* after the annealing (``lam = 0``) every gradient equals a plain `VAE`'s with the same
  encoder, decoder and draw (the linear decoder's own gradient aside);
* in between it is the ``lam``-mix of the two (Shao, Liu & Van den Broeck, 2025);
* the schedule advances on training-mode calls only and lives in ``state_dict``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from vitorch import silent
from vitorch.models import vae

D, O, B, SIGMA = 2, 5, 9, 0.5


def _model(**kw) -> vae.SilentVAE:
    torch.manual_seed(0)
    encoder = vae.GaussianEncoder(None, O, D, hidden=(6,))
    options = dict(observed_dim=O, anneal_steps=4)
    options.update(kw)
    return vae.SilentVAE(encoder, nn.Linear(D, O), vae.Gaussian(scale=SIGMA), D, **options).double()


def _data():
    return torch.randn(B, O, generator=torch.Generator().manual_seed(2), dtype=torch.float64)


def _encoder_grad(model, x, seed) -> torch.Tensor:
    model.zero_grad()
    torch.manual_seed(seed)
    model(x).loss.backward()
    return torch.cat([p.grad.flatten() for p in model.encoder.parameters()])


def test_start_is_the_silent_gradient_and_has_no_variance():
    model, x = _model(), _data()
    model.eval()  # keep lam = 1
    g0, g1 = _encoder_grad(model, x, 0), _encoder_grad(model, x, 1)
    assert torch.equal(g0, g1)
    model.zero_grad()
    silent.loss(x, model.encoder(x), model.linear_decoder).loss.backward()
    g_silent = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    torch.testing.assert_close(g0, g_silent, rtol=1e-12, atol=1e-12)


def test_after_annealing_equals_plain_vae():
    model, x = _model(anneal_steps=2), _data()
    model.train()
    for _ in range(2):
        model(x)
    assert model.silent_share() == 0.0 and int(model.step) == 2
    plain = vae.VAE(model.encoder, model.decoder, model.likelihood, D)
    for seed in (0, 5):
        torch.manual_seed(seed)
        model.zero_grad()
        model(x).loss.backward()
        ours = {n: p.grad.clone() for n, p in model.named_parameters() if not n.startswith("linear_decoder")}
        torch.manual_seed(seed)
        plain.zero_grad()
        out = plain(x)
        out.loss.backward()
        for n, p in plain.named_parameters():
            torch.testing.assert_close(ours[n], p.grad, rtol=1e-12, atol=1e-12)


def test_midway_is_the_mixture():
    model, x = _model(anneal_steps=4), _data()
    model.train()
    for _ in range(2):
        model(x)
    model.eval()
    lam = model.silent_share()
    assert lam == pytest.approx(0.5)
    g_mix = _encoder_grad(model, x, 7)
    model.zero_grad()
    silent.loss(x, model.encoder(x), model.linear_decoder).loss.backward()
    g_s = torch.cat([p.grad.flatten() for p in model.encoder.parameters()])
    plain = vae.VAE(model.encoder, model.decoder, model.likelihood, D)
    g_mc = _encoder_grad(plain, x, 7)
    torch.testing.assert_close(g_mix, lam * g_s + (1 - lam) * g_mc, rtol=1e-10, atol=1e-12)


def test_schedule_lives_in_state_dict_and_moves_in_training_only():
    model, x = _model(anneal_steps=10, hold=2), _data()
    model.eval()
    model(x)
    assert int(model.step) == 0
    model.train()
    for _ in range(5):
        model(x)
    assert int(model.step) == 5 and model.silent_share() == pytest.approx(0.7)
    other = _model(anneal_steps=10, hold=2)
    other.load_state_dict(model.state_dict())
    assert other.silent_share() == pytest.approx(0.7)


def test_bad_input():
    encoder = vae.GaussianEncoder(None, O, D)
    for kw, word in [
        (dict(observed_dim=0), "observed_dim"),
        (dict(observed_dim=O, anneal_steps=0), "anneal_steps"),
        (dict(observed_dim=O, hold=-1), "hold"),
        (dict(observed_dim=O, start=1.5), "start"),
    ]:
        with pytest.raises(ValueError, match=word):
            vae.SilentVAE(encoder, nn.Linear(D, O), vae.Gaussian(scale=1.0), D, **kw)
