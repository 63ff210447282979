"""The VAE on the kernels' fused backends: the same loss and gradients as the general path.

The ops themselves are tested against their references in ``tests/kernels``.  Here the
VAE's documented routing is pinned: the zoo's ``MLPDecoder`` with the zoo's ``Bernoulli``
likelihood is scored by one :func:`vitorch.kernels.bernoulli_linear_log_prob` call on the
output layer's weight and bias; anything else (another decoder or likelihood, or a
subclass of either) by ``likelihood.log_prob(decoder(z), x)``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import vitorch as vt
from vitorch.kernels import activation, bernoulli_linear
from vitorch.kernels.bernoulli_linear import fused as fused_bernoulli
from vitorch.models import vae
from vitorch.models.vae import networks


class PlainBernoulli(vae.Bernoulli):
    """A subclass: the documented way to the general path ``likelihood.log_prob(decoder(z), x)``."""


@pytest.fixture
def fuse_everything(monkeypatch):
    # The size rules lowered to one entry: the fused backends run at test sizes.
    monkeypatch.setattr(bernoulli_linear, "FUSED_MIN_NUMEL", 1)
    monkeypatch.setattr(activation, "FUSED_MIN_NUMEL", 1)


def _pair(K, objective, estimator, data_dim=40):
    torch.manual_seed(0)
    model = vae.VAE.mlp(data_dim, 3, (6,), objective=objective, estimator=estimator, num_particles=K)
    plain = vae.VAE.mlp(
        data_dim, 3, (6,), likelihood=PlainBernoulli(), objective=objective, estimator=estimator, num_particles=K
    )
    plain.load_state_dict(model.state_dict())
    return model, plain


def _spy(monkeypatch):
    calls = []
    backward = fused_bernoulli.BernoulliLinear.backward

    def wrapped(ctx, *grads):
        calls.append(1)
        return backward(ctx, *grads)

    monkeypatch.setattr(fused_bernoulli.BernoulliLinear, "backward", staticmethod(wrapped))
    return calls


@pytest.mark.parametrize(
    "objective,estimator", [(vt.objectives.elbo, vt.estimators.reparam), (vt.objectives.iwae, vt.estimators.dreg)]
)
def test_vae_on_the_fused_kernels_equals_the_general_path(monkeypatch, fuse_everything, objective, estimator):
    model, plain = _pair(5, objective, estimator)
    x = torch.bernoulli(torch.full((9, 40), 0.3))
    calls = _spy(monkeypatch)
    outs = []
    for m in (model, plain):
        torch.manual_seed(1)
        out = m(x)
        out.loss.backward()
        outs.append((out.loss.detach(), [p.grad for p in m.parameters()]))
    assert len(calls) == 1  # the zoo's pair went through the fused node, the subclass did not
    # Float32 sums reordered: agreement to rounding of a loss of order 30 and gradients of order 1.
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def test_only_the_zoo_decoder_and_likelihood_take_the_kernel(monkeypatch):
    calls = []
    kernel = networks.bernoulli_linear_log_prob
    monkeypatch.setattr(networks, "bernoulli_linear_log_prob", lambda *a: calls.append(1) or kernel(*a))
    x = torch.bernoulli(torch.full((4, 16), 0.5))
    z = torch.randn(3, 4, 2)
    vae.VAE.mlp(16, 2, (5,)).log_likelihood(z, x)
    assert calls == [1]
    vae.VAE.mlp(16, 2, (5,), likelihood=PlainBernoulli()).log_likelihood(z, x)
    vae.VAE.mlp(16, 2, (5,), likelihood=vae.Gaussian(scale=1.0)).log_likelihood(z, x)
    vae.VAE.conv((1, 4, 4), 2, 8).log_likelihood(z, x)
    assert calls == [1]


def test_output_layer_hooks_are_read_past_as_documented():
    # The kernel reads the output layer's weight and bias: its forward hooks do not run there
    # (the hidden layers' do); through a Bernoulli subclass every hook runs.
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    z = torch.randn(2, 4, 3)
    seen = []
    for likelihood in (vae.Bernoulli(), PlainBernoulli()):
        model = vae.VAE.mlp(12, 3, (5,), likelihood=likelihood)
        model.decoder.net[0].register_forward_hook(lambda *a: seen.append("hidden"))
        model.decoder.output.register_forward_hook(lambda *a: seen.append("output"))
        model.log_likelihood(z, x)
    assert seen == ["hidden", "hidden", "output"]


def test_vae_under_vmap_uses_the_references(fuse_everything):
    # torch.func transforms take the references (the fused nodes have no batching rule).
    model = vae.VAE.mlp(6, 2, (4,))
    z = torch.randn(3, 2, 2)
    x = torch.bernoulli(torch.full((2, 6), 0.5))
    batched = torch.func.vmap(lambda zz: model.log_likelihood(zz, x))(z)
    torch.testing.assert_close(batched, model.log_likelihood(z, x))


def test_vae_under_autocast_takes_the_references(monkeypatch, fuse_everything):
    calls = _spy(monkeypatch)
    model = vae.VAE.mlp(12, 2, (5,), objective=vt.objectives.iwae, num_particles=3).float()
    x = torch.bernoulli(torch.full((4, 12), 0.5)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x)
    out.loss.backward()
    assert calls == [] and out.loss.dtype == torch.float32 and torch.isfinite(out.loss)


def test_default_activation_is_the_kernel_tanh_and_nn_tanh_still_works():
    model = vae.VAE.mlp(10, 2, (4,))
    assert isinstance(model.decoder.net[1], vae.Tanh)
    x = torch.randn(3, 4)
    assert torch.equal(model.decoder.net[1](x), torch.tanh(x))  # small: the reference, torch.tanh
    torch_tanh = vae.VAE.mlp(10, 2, (4,), activation=nn.Tanh)
    assert isinstance(torch_tanh.decoder.net[1], nn.Tanh)
