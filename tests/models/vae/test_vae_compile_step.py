"""``vitorch.training.compile``: the fused VAE training step.

The compiled step must train exactly like the eager one (same losses, same parameters),
compile the whole VAE forward as one graph (no break, so no silent eager fall-back),
and its fused Adam must be Adam.
"""

from __future__ import annotations

import pytest
import torch

import vitorch as vt
from vitorch.models import vae
from vitorch.training.compile import CompiledStep, compile_step, fused_adam

CASES = [
    ("elbo-reparam", dict(objective=vt.objectives.elbo, num_particles=1)),
    ("iwae-dreg", dict(objective=vt.objectives.iwae, estimator=vt.estimators.dreg, num_particles=4)),
]


def _data():
    g = torch.Generator().manual_seed(0)
    return (torch.rand(6, 16, 12, generator=g) > 0.5).double()  # 6 batches [16, 12]


def _train(step_fn, model, batches):
    losses = []
    for x in batches:
        losses.append(float(step_fn(x).loss.detach()))
    return losses, [p.detach().clone() for p in model.parameters()]


def _eager_step(model, opt):
    def step(x):
        opt.zero_grad(set_to_none=True)
        out = model(x)
        out.loss.backward()
        opt.step()
        return out

    return step


@pytest.mark.parametrize("name,options", CASES, ids=[c[0] for c in CASES])
def test_compiled_step_trains_like_eager_in_one_graph(name, options):
    # A backend that runs Dynamo's captured graph as traced: the same ATen ops in the
    # same order as eager (plus the guard, see below), so the losses agree bit for bit, while
    # the graph count proves the forward was captured whole (fullgraph=True raises on a break).
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    batches = _data()
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), **options)
    step = compile_step(model, torch.optim.Adam(model.parameters(), 1e-2), options={"backend": backend})
    torch.manual_seed(2)
    losses, params = _train(step, model, batches)

    torch.manual_seed(1)
    eager = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), **options)
    torch.manual_seed(2)
    eager_losses, eager_params = _train(_eager_step(eager, torch.optim.Adam(eager.parameters(), 1e-2)), eager, batches)

    assert len(graphs) == 1, f"expected one captured graph, got {len(graphs)}"
    assert losses == eager_losses
    for a, b in zip(params, eager_params):
        # Eager CPU code skips the guard against infinite log-weights once the loss
        # proves it a no-op; the compiled graph keeps it (nan_to_num, whose backward
        # multiplies by a mask of ones).  Same values, but the extra node hands the
        # next backward a contiguous gradient instead of an expanded one, and a
        # reduction over it may round its last bit differently: parameters agree to
        # a few float64 ulps after six steps, not necessarily bit for bit.
        torch.testing.assert_close(a, b, rtol=1e-13, atol=1e-15)


def test_fused_adam_is_adam():
    # Same gradients fed to torch's default Adam and to the fused kernel for 5 steps in
    # float64: they differ only by the rounding of reordered arithmetic (a few ulps of
    # parameters of order 1), far inside 1e-12.
    torch.manual_seed(0)
    a = torch.randn(7, 3, requires_grad=True)
    b = a.detach().clone().requires_grad_(True)
    opt_a, opt_b = torch.optim.Adam([a], 1e-2), fused_adam([b], 1e-2)
    assert opt_b.defaults["fused"] is True
    for _ in range(5):
        g = torch.randn(7, 3)
        a.grad, b.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_default_step_builds_fused_adam_and_returns_the_output():
    torch.manual_seed(0)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,))
    step = compile_step(model, lr=1e-2, options={"backend": "eager"})
    assert isinstance(step, CompiledStep) and step.model is model
    assert step.optimizer.defaults["fused"] is True
    before = [p.detach().clone() for p in model.parameters()]
    out = step(_data()[0])
    assert out.bound.shape == (16,) and out.log_w.shape == (1, 16)
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before))


def test_bad_input_names_the_culprit():
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,))
    with pytest.raises(ValueError, match="model must be an nn.Module"):
        compile_step(lambda x: x)
    with pytest.raises(ValueError, match="lr must be positive"):
        compile_step(model, lr=0.0)
    with pytest.raises(ValueError, match="optimizer must be a torch.optim.Optimizer"):
        compile_step(model, optimizer="adam")
    with pytest.raises(ValueError, match="fullgraph"):
        compile_step(model, options={"fullgraph": False})
    with pytest.raises(ValueError, match="no parameters"):
        compile_step(torch.nn.Identity())
    with pytest.raises(ValueError, match="params is empty"):
        fused_adam([])


@pytest.mark.slow  # Inductor compiles the forward and backward (tens of seconds on a busy 2-core box)
def test_inductor_step_draws_the_eager_particles():
    # compile_step turns on Inductor's fallback_random: the compiled step takes its noise from
    # torch's generator, so under one seed it sees the eager step's particles and follows the
    # same trajectory. Fused float64 kernels reorder sums: agreement to rounding (a few ulps per
    # operation over ~100 operations and 3 Adam steps), far inside 1e-9; with Inductor's own
    # random stream the losses would differ at the first step by O(1).
    batches = _data()[:3]
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), objective=vt.objectives.iwae, num_particles=4)
    step = compile_step(model, torch.optim.Adam(model.parameters(), 1e-2))
    torch.manual_seed(2)
    losses, params = _train(step, model, batches)
    torch.manual_seed(1)
    eager = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), objective=vt.objectives.iwae, num_particles=4)
    torch.manual_seed(2)
    eager_losses, eager_params = _train(_eager_step(eager, torch.optim.Adam(eager.parameters(), 1e-2)), eager, batches)
    assert losses == pytest.approx(eager_losses, rel=1e-9)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
