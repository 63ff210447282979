"""``fit(..., compile=...)``: the compiled forward gives the eager losses."""

from __future__ import annotations

import pytest
import torch
from fit_models import TinyVAE, gaussian_data

from vitorch.training import fit


def run(compile, steps=4):
    torch.manual_seed(0)
    model = TinyVAE()
    hist = fit(model, gaussian_data(32), steps=steps, batch_size=8, compile=compile, progress=False)
    return [r["loss"] for r in hist.steps], [p.detach().clone() for p in model.parameters()]


def test_compiled_forward_matches_eager_cheap():
    # Dynamo captures the forward (vt.loss included) and hands the graphs to a backend
    # that runs them as traced: the same ATen ops in the same order, so the same bits.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    losses, params = run({"backend": backend})
    eager_losses, eager_params = run(False)
    assert graphs, "torch.compile captured no graph"
    assert losses == eager_losses
    for a, b in zip(params, eager_params):
        assert torch.equal(a, b)


@pytest.mark.slow  # ~40 s of Inductor compilation on a busy 2-core machine
def test_inductor_forward_matches_eager():
    from torch._inductor import config

    torch._dynamo.reset()
    # fallback_random: Inductor draws with torch's generator (not its own Philox stream),
    # so the compiled and eager runs see the same particles.
    with config.patch(fallback_random=True):
        losses, params = run(True)
    eager_losses, eager_params = run(False)
    # Fused float64 kernels reorder sums: agreement to rounding, a few ulps per operation
    # over ~100 operations and 4 Adam steps, far inside 1e-10.
    assert losses == pytest.approx(eager_losses, rel=1e-10)
    for a, b in zip(params, eager_params):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
