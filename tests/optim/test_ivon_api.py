"""IVON's interface: bad input, the sampling context, draws and their averages, state, BMA."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from vitorch.optim import IVON, bma_predict

from conftest import Z


def classifier():
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


@pytest.mark.parametrize(
    "bad, error, name",
    [
        (dict(lr=-0.1), ValueError, "lr"),
        (dict(lr="0.1"), TypeError, "lr"),
        (dict(ess=0.0), ValueError, "ess"),
        (dict(ess=math.nan), ValueError, "ess"),
        (dict(hess_init=0.0), ValueError, "hess_init"),
        (dict(beta1=1.0), ValueError, "beta1"),
        (dict(beta2=1.5), ValueError, "beta2"),
        (dict(weight_decay=-1e-4), ValueError, "weight_decay"),
        (dict(clip_radius=0.0), ValueError, "clip_radius"),
        (dict(mc_samples=0), ValueError, "mc_samples"),
        (dict(mc_samples=2.0), TypeError, "mc_samples"),
        (dict(seed="7"), TypeError, "seed"),
    ],
)
def test_bad_hyper_parameters_are_refused_by_name(bad, error, name):
    options = {"lr": 0.1, "ess": 100.0, **bad}
    with pytest.raises(error, match=name):
        IVON(classifier().parameters(), **options)


def test_a_group_mixing_dtypes_is_refused():
    params = [nn.Parameter(torch.zeros(3)), nn.Parameter(torch.zeros(3, dtype=torch.float32))]
    with pytest.raises(ValueError, match="group 0 mixes"):
        IVON(params, lr=0.1, ess=10.0)


def test_misuse_of_the_context_and_step_is_explained():
    net = classifier()
    opt = IVON(net.parameters(), lr=0.1, ess=10.0, seed=0)
    with pytest.raises(RuntimeError, match="no gradients from sampled weights"):
        opt.step()
    with opt.sampled_params(train=True):
        with pytest.raises(RuntimeError, match="already open"):
            with opt.sampled_params():
                pass
        with pytest.raises(RuntimeError, match="inside sampled_params"):
            net(torch.randn(2, 4)).sum().backward()
            opt.step()
    opt.zero_grad()  # outside a draw: the draws collected so far are forgotten
    with pytest.raises(RuntimeError, match="no gradients"):
        opt.step()
    with pytest.raises(TypeError, match="sampled_params"):
        bma_predict(net, torch.optim.Adam(net.parameters()), torch.randn(2, 4))
    with pytest.raises(ValueError, match="samples"):
        bma_predict(net, opt, torch.randn(2, 4), samples=0)


def test_a_draw_has_the_posterior_spread_and_the_mean_comes_back_bit_for_bit():
    weight = nn.Parameter(torch.randn(20000))
    frozen = nn.Parameter(torch.randn(5), requires_grad=False)
    opt = IVON([weight, frozen], lr=0.1, ess=50.0, hess_init=0.7, weight_decay=1e-2, seed=3)
    mean, kept = weight.detach().clone(), frozen.detach().clone()
    (sigma,) = opt.posterior_std()
    assert torch.allclose(sigma, torch.full_like(sigma, (50.0 * (0.7 + 1e-2)) ** -0.5))
    with opt.sampled_params():
        eps = (weight.detach() - mean) / sigma
        assert torch.equal(frozen, kept)  # parameters without gradients are not drawn
    assert torch.equal(weight, mean)
    n = eps.numel()
    assert abs(eps.mean()) <= Z / n**0.5  # N(0, 1): mean SE 1/sqrt(n), variance SE sqrt(2/n)
    assert abs(eps.var() - 1) <= Z * (2 / n) ** 0.5
    with pytest.raises(KeyError):
        with opt.sampled_params(train=True):
            raise KeyError("inside the block")
    assert torch.equal(weight, mean)


def test_grad_after_several_draws_is_their_average_and_the_hessian_statistic_follows():
    # Loss ½ Σ θ²: each draw's gradient is the draw itself, so .grad must be the average draw.
    weight = nn.Parameter(torch.randn(6))
    opt = IVON([weight], lr=0.1, ess=20.0, hess_init=0.5, beta2=0.5, weight_decay=0.0, seed=5)
    mean, draws = weight.detach().clone(), []
    for _ in range(3):
        with opt.sampled_params(train=True):
            draws.append(weight.detach().clone())
            (0.5 * weight.square().sum()).backward()
    draws = torch.stack(draws)
    torch.testing.assert_close(weight.grad, draws.mean(0), rtol=1e-14, atol=1e-14)
    # ĥ = λ (h + δ) · mean of ĝ (θ - m) = λ h₀ · mean of θ (θ - m); h ← β₂ h + (1 - β₂) ĥ + correction.
    h0, hhat = 0.5, 20.0 * 0.5 * (draws * (draws - mean)).mean(0)
    expected = 0.5 * h0 + 0.5 * hhat + 0.5 * 0.25 * (h0 - hhat) ** 2 / h0
    opt.step()
    torch.testing.assert_close(opt.state[weight]["hess"], expected, rtol=1e-12, atol=1e-12)


def test_closure_and_context_take_the_same_steps():
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    nets = [classifier() for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [IVON(n.parameters(), lr=0.1, ess=16.0, mc_samples=2, seed=9) for n in nets]
    for _ in range(3):
        for _ in range(2):
            with opts[0].sampled_params(train=True):
                F.cross_entropy(nets[0](x), y).backward()
        opts[0].step()

        def closure():
            loss = F.cross_entropy(nets[1](x), y)
            loss.backward()
            return loss

        assert opts[1].step(closure).shape == ()
    for a, b in zip(nets[0].parameters(), nets[1].parameters()):
        assert torch.equal(a, b)


def train(net, opt, x, y, steps):
    for _ in range(steps):
        with opt.sampled_params(train=True):
            F.cross_entropy(net(x), y).backward()
        opt.step()


def test_state_dict_round_trip_continues_the_same_noise():
    x, y = torch.randn(16, 4), torch.randint(0, 3, (16,))
    net = classifier()
    opt = IVON(net.parameters(), lr=0.1, ess=16.0, seed=1)
    train(net, opt, x, y, 3)
    buffer = io.BytesIO()
    torch.save({"net": net.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # plain tensors and numbers only
    train(net, opt, x, y, 4)

    other = classifier()
    other.load_state_dict(saved["net"])
    other_opt = IVON(other.parameters(), lr=0.1, ess=16.0, seed=12345)  # the seed comes from the state
    other_opt.load_state_dict(saved["opt"])
    train(other, other_opt, x, y, 4)
    for a, b in zip(net.parameters(), other.parameters()):
        assert torch.equal(a, b)


def test_bma_predict_averages_the_draws_and_can_leave_the_training_stream_alone():
    x = torch.randn(5, 4)
    net = classifier()
    opt = IVON(net.parameters(), lr=0.1, ess=10.0, seed=2)
    probs = bma_predict(net, opt, x, samples=4, generator=torch.Generator().manual_seed(0))
    assert probs.shape == (5, 3)
    torch.testing.assert_close(probs.sum(-1), torch.ones(5))
    manual, g = 0, torch.Generator().manual_seed(0)
    for _ in range(4):
        with opt.sampled_params(generator=g):
            manual = manual + torch.softmax(net(x), -1)
    torch.testing.assert_close(probs, manual / 4)
    # The optimizer's own generator did not move: its next draw is the one a fresh optimizer makes.
    fresh = IVON(net.parameters(), lr=0.1, ess=10.0, seed=2)
    with opt.sampled_params():
        a = [p.detach().clone() for p in net.parameters()]
    with fresh.sampled_params():
        b = [p.detach().clone() for p in net.parameters()]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
