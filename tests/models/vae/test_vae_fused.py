"""The VAE's fused pieces against their textbook form: the Bernoulli output layer and tanh.

Each hand-written backward is checked by float64 ``gradcheck`` on odd sizes and, as in
flash-linear-attention's op tests, against autograd of the plain torch formula with a
random upstream gradient (every input gradient compared).  The VAE must take the fused
path exactly where it applies and give the textbook loss and gradients there.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import vitorch as vt
from vitorch.models import vae
from vitorch.models.vae import fused


def _textbook(h, weight, bias, x):
    logits = F.linear(h, weight, bias)
    return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").sum(-1)


def _inputs(lead, batch, hidden, width):
    h = torch.randn(*lead, batch, hidden, requires_grad=True)
    weight = torch.randn(width, hidden, requires_grad=True)
    bias = torch.randn(width, requires_grad=True)
    x = torch.bernoulli(torch.full((batch, width), 0.4))
    return h, weight, bias, x


@pytest.mark.parametrize("lead", [(), (1,), (7,), (2, 3)])
def test_bernoulli_linear_gradcheck(lead):
    h, weight, bias, x = _inputs(lead, 3, 5, 7)
    assert torch.autograd.gradcheck(lambda *a: fused.bernoulli_linear_log_prob(*a, x), (h, weight, bias))


@pytest.mark.parametrize("size", [(1, 1, 1, 1), (7, 5, 3, 127), (3, 2, 9, 1000)])
def test_bernoulli_linear_matches_textbook(size):
    k, batch, hidden, width = size
    h, weight, bias, x = _inputs((k,), batch, hidden, width)
    x[0] = torch.rand(width)  # real-valued data use the same formula x l - softplus(l)
    got, want = fused.bernoulli_linear_log_prob(h, weight, bias, x), _textbook(h, weight, bias, x)
    torch.testing.assert_close(got, want)
    up = torch.randn_like(want)
    for a, b in zip(torch.autograd.grad(got, (h, weight, bias), up), torch.autograd.grad(want, (h, weight, bias), up)):
        torch.testing.assert_close(a, b)


def test_bernoulli_linear_repeated_backward_and_frozen_inputs():
    # The first backward reuses the logits' buffer; a second one (retain_graph) must recompute them.
    h, weight, bias, x = _inputs((4,), 3, 5, 6)
    out = fused.bernoulli_linear_log_prob(h, weight, bias, x).sum()
    first = torch.autograd.grad(out, (h, weight, bias), retain_graph=True)
    second = torch.autograd.grad(out, (h, weight, bias))
    for a, b in zip(first, second):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # Only some inputs needing a gradient (a frozen decoder layer).
    frozen = fused.bernoulli_linear_log_prob(h, weight.detach(), bias.detach(), x).sum()
    (g,) = torch.autograd.grad(frozen, h)
    torch.testing.assert_close(g, first[0])


def test_bernoulli_linear_has_no_silent_double_backward():
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    (g,) = torch.autograd.grad(fused.bernoulli_linear_log_prob(h, weight, bias, x).sum(), h, create_graph=True)
    with pytest.raises(RuntimeError):
        g.sum().backward()


def test_bernoulli_linear_bad_input():
    h, weight, bias, x = _inputs((2,), 3, 4, 5)
    with pytest.raises(ValueError, match="do not fit"):
        fused.bernoulli_linear_log_prob(h, weight, bias, x[:, :4])
    with pytest.raises(ValueError, match="bias must be"):
        fused.bernoulli_linear_log_prob(h, weight, bias[:4], x)
    with pytest.raises(ValueError, match="x must not require"):
        fused.bernoulli_linear_log_prob(h, weight, bias, x.requires_grad_())
    with pytest.raises(ValueError, match="dtypes differ"):
        fused.bernoulli_linear_log_prob(h, weight, bias, x.detach().float())


@pytest.mark.parametrize("fused_min", [1, fused.TANH_FUSED_MIN])  # the Function, then torch.tanh
@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 5, 13)])
def test_tanh_gradcheck(monkeypatch, shape, fused_min):
    monkeypatch.setattr(fused, "TANH_FUSED_MIN", fused_min)
    x = (3 * torch.randn(*shape)).requires_grad_()
    assert torch.autograd.gradcheck(fused.tanh, (x,))
    assert torch.autograd.gradgradcheck(fused.tanh, (x,))


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 2.4e-7), (torch.float64, 4.5e-16)])
def test_tanh_absolute_error(dtype, bound):
    # 2 sigmoid(2x) - 1 rounds at the scale of 1: a few ulps of 1 in absolute terms
    # (float32 ulp(1) = 1.2e-7, float64 2.2e-16), against tanh in float64 (exact enough here).
    x = torch.linspace(-30, 30, 400_001, dtype=torch.float64)
    exact = torch.tanh(x)
    for n in (1000, x.numel()):  # torch.tanh below TANH_FUSED_MIN, the fused Function above
        got = fused.tanh(x[:n].to(dtype)).double()
        assert (got - exact[:n]).abs().max().item() <= bound
    # Under torch.func the same formula runs as plain ops.
    got = torch.func.vmap(fused.tanh)(x.to(dtype).view(1, -1)).double()
    assert (got.view(-1) - exact).abs().max().item() <= bound
    assert fused.Tanh()(x.to(dtype)).dtype == dtype


def _pair(K, objective, estimator, data_dim=40, activation=fused.Tanh):
    torch.manual_seed(0)
    model = vae.VAE.mlp(
        data_dim, 3, (6,), objective=objective, estimator=estimator, num_particles=K, activation=activation
    )
    plain = vae.VAE.mlp(
        data_dim, 3, (6,), objective=objective, estimator=estimator, num_particles=K, activation=activation
    )
    plain.load_state_dict(model.state_dict())
    plain._fused_output = lambda x, z=None: None  # the textbook path on the same weights
    return model, plain


@pytest.mark.parametrize(
    "objective,estimator", [(vt.objectives.elbo, vt.estimators.reparam), (vt.objectives.iwae, vt.estimators.dreg)]
)
def test_vae_fused_path_equals_textbook(monkeypatch, objective, estimator):
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 1)  # fuse at test sizes
    model, plain = _pair(5, objective, estimator)
    x = torch.bernoulli(torch.full((9, 40), 0.3))
    calls = []
    monkeypatch.setattr(fused._BernoulliLinear, "backward", _spy(fused._BernoulliLinear.backward, calls))
    outs = []
    for m in (model, plain):
        torch.manual_seed(1)
        out = m(x)
        out.loss.backward()
        outs.append((out.loss.detach(), [p.grad for p in m.parameters()]))
    assert len(calls) == 1  # the fused model went through the Function, the plain one did not
    torch.testing.assert_close(outs[0][0], outs[1][0])
    for a, b in zip(outs[0][1], outs[1][1]):
        torch.testing.assert_close(a, b)


def _spy(fn, calls):
    def wrapped(ctx, *grads):
        calls.append(1)
        return fn(ctx, *grads)

    return staticmethod(wrapped).__func__


def test_vae_takes_the_fused_output_only_where_it_applies(monkeypatch):
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 1)
    x = torch.bernoulli(torch.full((4, 12), 0.5))
    model = vae.VAE.mlp(12, 2, (5,))
    assert model._fused_output(x) is model.decoder.net[-1]
    assert model._fused_output(x.float()) is None  # dtype differs from the weights
    assert vae.VAE.mlp(12, 2, (5,), likelihood=vae.Gaussian(scale=1.0))._fused_output(x) is None
    assert vae.VAE.conv((1, 4, 4), 2, 8)._fused_output(torch.zeros(4, 16)) is None
    handle = model.decoder.net[-1].register_forward_hook(lambda *a: None)
    assert model._fused_output(x) is None  # a hook the fused path would skip
    handle.remove()
    with torch.no_grad():
        out = model(x)
    assert out.bound.shape == (4,)
    big = vae.VAE.mlp(12, 2, (5,))
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 10**9)
    torch.manual_seed(2)
    below = big(x).bound  # below the size threshold: the textbook path, same value
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 1)
    torch.manual_seed(2)
    torch.testing.assert_close(big(x).bound, below)


def test_bernoulli_linear_under_vmap_and_grad():
    # torch.func transforms take the plain expression: same values and gradients.
    h, weight, bias, x = _inputs((3,), 2, 4, 5)
    batched = torch.func.vmap(lambda hh: fused.bernoulli_linear_log_prob(hh, weight, bias, x))(h)
    torch.testing.assert_close(batched, _textbook(h, weight, bias, x))
    g = torch.func.grad(lambda w: fused.bernoulli_linear_log_prob(h, w, bias, x).sum())(weight)
    torch.testing.assert_close(g, torch.autograd.grad(_textbook(h, weight, bias, x).sum(), weight)[0])


def test_vae_under_vmap_uses_plain_ops(monkeypatch):
    # torch.func transforms take the plain formulas (the Functions have no batching rule).
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 1)
    model = vae.VAE.mlp(6, 2, (4,))
    z = torch.randn(3, 2, 2)
    x = torch.bernoulli(torch.full((2, 6), 0.5))
    batched = torch.func.vmap(lambda zz: model.log_likelihood(zz, x))(z)
    torch.testing.assert_close(batched, model.log_likelihood(z, x))


def test_vae_under_autocast_takes_the_textbook_path(monkeypatch):
    monkeypatch.setattr("vitorch.models.vae.model.BERNOULLI_FUSED_MIN", 1)
    model = vae.VAE.mlp(12, 2, (5,), objective=vt.objectives.iwae, num_particles=3).float()
    x = torch.bernoulli(torch.full((4, 12), 0.5)).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert model._fused_output(x) is None
        out = model(x)
        out.loss.backward()
    assert torch.isfinite(out.loss)


def test_default_activation_is_the_sigmoid_tanh_and_nn_tanh_still_works():
    model = vae.VAE.mlp(10, 2, (4,))
    assert isinstance(model.decoder.net[1], fused.Tanh)
    torch_tanh = vae.VAE.mlp(10, 2, (4,), activation=nn.Tanh)
    assert isinstance(torch_tanh.decoder.net[1], nn.Tanh)
