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


def _mixed_run(autocast_dtype, steps=3):
    from vitorch.models import vae

    torch.manual_seed(0)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(16,)).float()
    x = (torch.rand(32, 12, generator=torch.Generator().manual_seed(1)) > 0.5).float()
    hist = fit(model, x, steps=steps, batch_size=8, autocast_dtype=autocast_dtype, eval_data=x, progress=False)
    return hist, model


def test_autocast_forward_trains_in_mixed_precision_and_evaluates_in_float32():
    # Each training forward runs under torch.autocast (bfloat16 matrix products), so its first
    # loss is that of the eager autocast forward on the same batch and particles, and differs
    # from the float32 one; parameters stay float32; the held-out bound is float32 as well.
    hist, model = _mixed_run(torch.bfloat16, steps=1)
    ref_hist, _ = _mixed_run(None, steps=1)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert hist.steps[0]["loss"] != ref_hist.steps[0]["loss"]
    # bfloat16 keeps ~3 significant digits of each network output: the 12-pixel loss of the
    # first step (same weights, batch and particles) moves by far less than 5%.
    assert hist.steps[0]["loss"] == pytest.approx(ref_hist.steps[0]["loss"], rel=0.05)
    assert torch.isfinite(torch.tensor([r["loss"] for r in hist.steps])).all()


def test_bad_autocast_dtype_is_a_value_error():
    with pytest.raises(ValueError, match="autocast_dtype"):
        _mixed_run(torch.float64)
