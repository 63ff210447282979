"""Every recipe trains, the loss goes down on digits, collapse is detected, state round-trips,
and the model's options produce the bounds and gradients they promise."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.distributions import kl_divergence

import vitorch as vt
from vitorch.data import digits
from vitorch.diagnostics import collapse_diagnostics
from vitorch.models import vae

from conftest import Z

SMALL = dict(latent_dim=4, hidden=(16,))
RECIPE_ARGS = {
    "iwae": dict(K=4),
    "iwae_dreg": dict(K=4),
    "vis": dict(K=4),
    "ciwae": dict(K=4),
    "miwae": dict(M=2, K=2),
    "piwae": dict(M=2, K=2),
    "beta_vae": dict(beta=2.0),
    "info_vae": dict(lam=10.0),
}


@pytest.fixture(scope="module")
def train_x():
    return digits("train", binarize="fixed", dtype=torch.float64).images


@pytest.fixture(scope="module")
def test_x():
    return digits("test", binarize="fixed", dtype=torch.float64).images


def _steps(model, x, n, lr=3e-3, batch=64):
    opt = torch.optim.Adam(model.parameters(), lr)
    losses = []
    for _ in range(n):
        out = model(x[torch.randint(0, x.shape[0], (batch,))])
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        losses.append(float(out.loss.detach()))
    return losses


@pytest.mark.parametrize("name", sorted(vae.RECIPES))
def test_every_recipe_trains_without_nan(name, train_x):
    args = {**SMALL, **RECIPE_ARGS.get(name, {})}
    if name in ("gumbel_vae", "enumerated_vae"):  # categorical latents: L codes of C classes, not a latent_dim
        args.pop("latent_dim")
        args.update(num_latents=2, num_classes=3)
    model = vae.RECIPES[name](64, **args)
    losses = _steps(model, train_x, 5)
    assert all(math.isfinite(v) for v in losses), losses
    model.zero_grad()
    model(train_x[:32]).loss.backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and bool(torch.isfinite(p.grad).all()), pname
        assert float(p.grad.abs().sum()) > 0, f"{name}: {pname} gets no gradient"


@pytest.mark.parametrize(
    "likelihood, data",
    [
        (lambda: vae.Gaussian(learned="decoder"), lambda x: x),
        (lambda: vae.Gaussian(event_shape=(64,)), lambda x: x),
        (lambda: vae.Categorical(17), lambda x: (x * 16).round()),
        (lambda: vae.Poisson(), lambda x: (x * 16).round()),
    ],
    ids=["gaussian-decoder-scale", "gaussian-shared-scale", "categorical", "poisson"],
)
@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_likelihoods_and_architectures_train(likelihood, data, arch):
    x = data(digits("train", binarize=None).images[:256])
    if arch == "mlp":
        model = vae.iwae(64, K=3, likelihood=likelihood(), **SMALL)
    else:
        model = vae.iwae(64, K=3, image_shape=(1, 8, 8), likelihood=likelihood(), latent_dim=4, features=16)
    losses = _steps(model, x, 5, batch=32)
    assert all(math.isfinite(v) for v in losses), losses


def _heldout_elbo(model, x, K=20):
    """Per-datum ELBO estimates ``[N]`` (averaged over K particles)."""
    with torch.no_grad():
        q = model.encoder(x)
        z, log_q = q.rsample_and_log_prob((K,))
        return (model.log_joint(x)(z) - log_q).mean(0)


def test_loss_decreases_on_digits(train_x, test_x):
    model = vae.vae(64, latent_dim=8, hidden=(64,))
    before = _heldout_elbo(model, test_x)
    losses = _steps(model, train_x, 100)
    after = _heldout_elbo(model, test_x)
    # The held-out ELBO must rise by more than Z standard errors of the difference of
    # two independent data averages (N = 359 test digits each).
    se = math.sqrt(float(before.var() + after.var()) / before.numel())
    assert float(after.mean() - before.mean()) > Z * se, (float(before.mean()), float(after.mean()), se)
    assert sum(losses[-10:]) < sum(losses[:10])


class IgnoresZ(nn.Module):
    """A decoder that ignores z: the same learned logits for every latent."""

    def __init__(self, size):
        super().__init__()
        self.logits = nn.Parameter(torch.zeros(size))

    def forward(self, z):
        return self.logits.expand(*z.shape[:-1], self.logits.shape[0])


def test_collapse_diagnostics_flag_a_decoder_that_ignores_z(train_x, test_x):
    # With p(x | z) free of z the ELBO's only encoder term is -KL(q || p), so training
    # drives every unit to the prior: no active unit.  The same model with a real decoder
    # uses its latents.  (Activity threshold 0.01, Burda et al.; after 300 steps the
    # collapsed encoder's largest activity is below 1e-3 and the healthy one's above 0.1.)
    collapsed = vae.vae(64, latent_dim=8, hidden=(64,))
    collapsed.decoder = IgnoresZ(64)
    healthy = vae.vae(64, latent_dim=8, hidden=(64,))
    for model in (collapsed, healthy):
        _steps(model, train_x, 300)
    bad, good = collapse_diagnostics(collapsed.encoder, test_x), collapse_diagnostics(healthy.encoder, test_x)
    assert bad.units.count == 0 and float(bad.kl.sum()) < 0.5
    assert good.units.count >= 2 and float(good.kl.sum()) > 1.0
    assert vae.evaluate(collapsed, test_x, num_particles=2)["active_units"] == 0


@pytest.mark.parametrize("name", ["vae", "iaf_vae", "gaussian"])
def test_state_dict_round_trip(name):
    def build():
        if name == "gaussian":
            return vae.vae(64, likelihood=vae.Gaussian(event_shape=(64,)), **SMALL)
        return vae.RECIPES[name](64, **SMALL)

    model = build()
    _steps(model, digits("train", binarize=None).images[:128], 3, batch=16)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    clone = build()
    clone.load_state_dict(torch.load(buffer, weights_only=True))
    x = digits("test", binarize=None).images[:16]
    torch.manual_seed(3)
    a = model(x).loss
    torch.manual_seed(3)
    b = clone(x).loss
    assert torch.equal(a.detach(), b.detach())
    torch.manual_seed(4)
    sa = model.sample(4)
    torch.manual_seed(4)
    torch.testing.assert_close(clone.sample(4), sa, rtol=0, atol=0)


def _grads(model, x, seed):
    model.zero_grad()
    torch.manual_seed(seed)
    out = model(x)
    out.loss.backward()
    return out, {k: p.grad.clone() for k, p in model.named_parameters()}


def test_analytic_kl_is_the_closed_form_elbo():
    # Value and reparameterized gradient equal E log p(x|z) - beta KL(q || p) written by hand
    # on the same noise (DiagNormal draws eps in the same order in both).
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    model = vae.beta_vae(12, beta=3.0, **SMALL)
    out, got = _grads(model, x, 0)
    model.zero_grad()
    torch.manual_seed(0)
    q = model.encoder(x)
    z = q.rsample((1,))
    bound = model.likelihood.log_prob(model.decoder(z), x)[0] - 3.0 * kl_divergence(q, model.prior(x))
    (-bound.mean()).backward()
    torch.testing.assert_close(out.bound, bound.detach())
    for k, p in model.named_parameters():
        torch.testing.assert_close(got[k], p.grad, msg=k)


def test_beta_weights_the_monte_carlo_kl():
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    model = vae.vae(12, kl_weight=0.25, **SMALL)
    torch.manual_seed(0)
    out = model(x)
    torch.manual_seed(0)
    q = model.encoder(x)
    z, log_q = q.rsample_and_log_prob((1,))
    expected = model.likelihood.log_prob(model.decoder(z), x) + 0.25 * (model.log_prior(z) - log_q)
    torch.testing.assert_close(out.log_w, expected.detach())


def test_info_vae_adds_the_weighted_mmd():
    x = torch.bernoulli(torch.full((8, 12), 0.3))
    model = vae.info_vae(12, alpha=0.5, lam=3.0, **SMALL)  # KL weight 0.5, MMD weight 2.5
    assert model.kl_weight == 0.5 and model.mmd_weight == 2.5
    torch.manual_seed(0)
    out = model(x)
    z = out.z.detach().reshape(-1, 4)
    torch.manual_seed(0)
    model.encoder(x).rsample_and_log_prob((1,))  # replay the particle draw, then the prior draw
    penalty = vt.objectives.mmd(z, torch.randn_like(z), kernel="imq")
    torch.testing.assert_close(out.loss, -out.bound.mean() + 2.5 * penalty)


def test_dreg_and_piwae_give_each_network_its_gradient():
    # IWAE-DReG keeps IWAE's decoder gradient; PIWAE's decoder follows IWAE_{MK} and its
    # encoder MIWAE(M, K), each on the same draws (Rainforth et al., 2018).
    x = torch.bernoulli(torch.full((6, 12), 0.4))
    torch.manual_seed(1)
    ref = vae.iwae(12, K=4, **SMALL)
    state = ref.state_dict()
    models = {
        "iwae": ref,
        "dreg": vae.iwae_dreg(12, K=4, **SMALL),
        "piwae": vae.piwae(12, M=2, K=2, **SMALL),
        "miwae": vae.miwae(12, M=2, K=2, **SMALL),
    }
    grads = {}
    for name, m in models.items():
        m.load_state_dict(state)
        grads[name] = _grads(m, x, 7)[1]
    for k in grads["iwae"]:
        if k.startswith("decoder"):
            torch.testing.assert_close(grads["dreg"][k], grads["iwae"][k], msg=k)
            torch.testing.assert_close(grads["piwae"][k], grads["iwae"][k], msg=k)
        else:
            torch.testing.assert_close(grads["piwae"][k], grads["miwae"][k], msg=k)
    enc = [k for k in grads["iwae"] if k.startswith("encoder")]
    assert any(not torch.allclose(grads["dreg"][k], grads["iwae"][k]) for k in enc)
