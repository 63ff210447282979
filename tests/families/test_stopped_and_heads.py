"""Stopped-parameter log-densities and amortized heads (TESTING.md family 20).

``stopped(q).log_prob(z)`` must equal ``q.log_prob(z)`` bit for bit, carry no
gradient to q's parameters except through ``z``, and keep the gradient through
``z``.  Heads: shapes, a gradient for every parameter, a state_dict round trip
that reproduces the output exactly.
"""

from __future__ import annotations

import io

import gaussian_cases as gc
import pytest
import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    ExpTransform,
    Gamma,
    Independent,
    LowRankMultivariateNormal,
    MultivariateNormal,
    Normal,
    TransformedDistribution,
)
from torch.testing import assert_close

from vitorch.families import DiagNormalHead, FullRankNormalHead, LowRankNormalHead, stopped

D = 3


def _vitorch(kind):
    def make():
        p = {k: v.requires_grad_() for k, v in gc.params(kind, (2,), D).items()}
        return gc.family(kind, p), list(p.values())

    return make


def _torch(make_dist, *shapes, positive=()):
    def make():
        params = [
            (torch.rand(s) + 0.5 if i in positive else torch.randn(s)).requires_grad_() for i, s in enumerate(shapes)
        ]
        return make_dist(*params), params

    return make


def _tril(t):
    # A lower-triangular factor with a positive diagonal, differentiable in t.
    return t.tril(-1) + torch.diag_embed(t.diagonal(dim1=-2, dim2=-1).exp())


DISTRIBUTIONS = {
    "DiagNormal": _vitorch("diag"),
    "FullRankNormal": _vitorch("full"),
    "LowRankNormal": _vitorch("lowrank"),
    "Normal": _torch(Normal, (2, D), (2, D), positive=(1,)),
    "Independent(Normal)": _torch(lambda m, s: Independent(Normal(m, s), 1), (2, D), (2, D), positive=(1,)),
    "MultivariateNormal": _torch(lambda m, t: MultivariateNormal(m, scale_tril=_tril(t)), (2, D), (D, D)),
    "LowRankMultivariateNormal": _torch(LowRankMultivariateNormal, (2, D), (2, D, 2), (2, D), positive=(2,)),
    "Gamma": _torch(Gamma, (2, D), (2, D), positive=(0, 1)),
}


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_stopped_log_prob_is_identical_and_cut_from_the_parameters(name):
    q, params = DISTRIBUTIONS[name]()
    z = q.rsample((4,))
    s = stopped(q)
    assert type(s) is type(q) and s.batch_shape == q.batch_shape and s.event_shape == q.event_shape
    log_q = q.log_prob(z)
    log_s = s.log_prob(z)
    assert torch.equal(log_s, log_q)

    # No path to the parameters at a fixed z ...
    z0 = z.detach().requires_grad_()
    grads = torch.autograd.grad(s.log_prob(z0).sum(), [*params, z0], allow_unused=True)
    assert all(g is None for g in grads[:-1])
    # ... but the path through z is intact and equals q's.
    (dz_q,) = torch.autograd.grad(q.log_prob(z0).sum(), z0)
    assert_close(grads[-1], dz_q, rtol=0, atol=0)
    # Through a reparameterized z, the whole gradient is the chain rule through z.
    through_z = torch.autograd.grad(z, params, grad_outputs=dz_q.detach(), allow_unused=True, retain_graph=True)
    direct = torch.autograd.grad(log_s.sum(), params, allow_unused=True)
    for g, ref in zip(direct, through_z):
        assert_close(g, ref, rtol=1e-12, atol=1e-12)


def test_stopped_handles_either_parametrization_and_rejects_what_it_cannot_rebuild():
    b = Bernoulli(logits=torch.randn(3, requires_grad=True))
    b.probs  # noqa: B018  (reading it caches probs next to logits, as in user code)
    x = torch.tensor([0.0, 1.0, 1.0])
    s = stopped(b)
    assert_close(s.log_prob(x), b.log_prob(x), rtol=1e-15, atol=1e-15)
    assert not s.log_prob(x).requires_grad
    with pytest.raises(ValueError, match="TransformedDistribution"):
        stopped(TransformedDistribution(Normal(0.0, 1.0), [ExpTransform()]))


HEADS = {
    "diag": lambda **kw: DiagNormalHead(5, D, **kw),
    "full": lambda **kw: FullRankNormalHead(5, D, **kw),
    "lowrank": lambda **kw: LowRankNormalHead(5, D, rank=2, **kw),
}


@pytest.mark.parametrize("hidden", [(), (8,)])
@pytest.mark.parametrize("kind", list(HEADS))
def test_head_shapes_and_every_parameter_gets_a_gradient(kind, hidden):
    head = HEADS[kind](hidden=hidden, activation=nn.Tanh)
    for context_shape in [(4,), (2, 4)]:
        q = head(torch.randn(*context_shape, 5))
        assert isinstance(q, gc.CLASSES[kind])
        assert q.batch_shape == context_shape and q.event_shape == (D,)
    head.zero_grad()
    z, log_q = q.rsample_and_log_prob((3,))
    ((z - 1).pow(2).sum() + log_q.sum()).backward()
    for name, param in head.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kind", list(HEADS))
def test_head_state_dict_round_trip_reproduces_the_output(kind):
    head = HEADS[kind](hidden=(8,))
    context = torch.randn(4, 5)
    buffer = io.BytesIO()
    torch.save(head.state_dict(), buffer)
    buffer.seek(0)
    other = HEADS[kind](hidden=(8,))  # a different initialization
    assert not torch.equal(other(context).mean, head(context).mean)
    other.load_state_dict(torch.load(buffer, weights_only=True))
    q, r = head(context), other(context)
    assert torch.equal(q.mean, r.mean) and torch.equal(q.covariance_matrix, r.covariance_matrix)


@pytest.mark.parametrize("kind", list(HEADS))
def test_head_scale_floor(kind):
    head = HEADS[kind](min_scale=0.1)
    with torch.no_grad():
        head.net[-1].bias.fill_(-50.0)  # softplus(-50) ~ 2e-22: the floor alone sets the scale
        head.net[-1].weight.zero_()
    q = head(torch.randn(4, 5))
    if kind == "lowrank":
        assert_close(q.cov_diag, torch.full((4, D), 0.1**2), rtol=1e-12, atol=0)
    else:
        assert_close(q.scale_tril.diagonal(dim1=-2, dim2=-1), torch.full((4, D), 0.1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_same_seed_gives_identical_draws_densities_and_gradients(kind):
    p = gc.params(kind, (2,), D)

    def run():
        leaves = {k: v.clone().requires_grad_() for k, v in p.items()}
        torch.manual_seed(123)
        z, log_q = gc.family(kind, leaves).rsample_and_log_prob((4,))
        grads = torch.autograd.grad((z.pow(2).sum(-1) + log_q).sum(), list(leaves.values()))
        return z.detach(), log_q.detach(), grads

    for a, b in zip(run(), run()):
        if isinstance(a, tuple):
            assert all(torch.equal(x, y) for x, y in zip(a, b))
        else:
            assert torch.equal(a, b)
