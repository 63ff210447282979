"""Mixed precision: matrix products under ``torch.autocast``, densities in float32.

Under autocast a ``Linear`` returns bfloat16.  The library promotes every network output
that parameterizes a distribution (Gaussian heads, flow conditioners, the decoder's
likelihood parameters) back to float32 before a density or a particle is formed
(:func:`vitorch.full_precision`), so the log-weights are float32 functions of the
(bfloat16-rounded) network outputs.  These tests pin that contract exactly: the values
under autocast equal float32 densities evaluated outside autocast on the same network
outputs, bit for bit.  ``compile_step(autocast_dtype=...)`` must run that same forward.
"""

from __future__ import annotations

import pytest
import torch

import vitorch as vt
from vitorch.families import DiagNormalHead
from vitorch.models import vae
from vitorch.training.compile import compile_step

BF16 = torch.bfloat16


def _binary(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, d, generator=g) > 0.5).float()


def test_full_precision_promotes_only_low_precision_under_autocast():
    t32, t16 = torch.randn(3, dtype=torch.float32), torch.randn(3, dtype=BF16)
    assert vt.full_precision(t16) is t16  # no autocast: a user's bfloat16 model stays bfloat16
    with torch.autocast("cpu", dtype=BF16):
        assert vt.full_precision(t32) is t32
        out = vt.full_precision(t16)
    assert out.dtype == torch.float32 and torch.equal(out, t16.float())


def test_head_builds_a_float32_family_from_the_autocast_output():
    head = DiagNormalHead(6, 3, hidden=(8,)).float()
    x = torch.randn(5, 6, dtype=torch.float32)
    with torch.autocast("cpu", dtype=BF16):
        raw = head.net(x)
        q = head(x)
        torch.manual_seed(3)
        z, log_q = q.rsample_and_log_prob((4,))
    assert raw.dtype == BF16  # autocast did run the matrix products in bfloat16
    assert q.loc.dtype == q.scale.dtype == z.dtype == log_q.dtype == torch.float32
    loc, scale_raw = raw.float().chunk(2, -1)
    torch.testing.assert_close(q.loc, loc, rtol=0, atol=0)
    # Particles and density are the float32 ones of the rounded parameters, outside autocast.
    torch.manual_seed(3)
    z32, log_q32 = vt.DiagNormal(q.loc.detach(), q.scale.detach()).rsample_and_log_prob((4,))
    torch.testing.assert_close(z.detach(), z32, rtol=0, atol=0)
    torch.testing.assert_close(log_q.detach(), log_q32, rtol=0, atol=0)


@pytest.mark.parametrize("posterior", ["diag", "iaf"])
def test_vae_log_weights_are_float32_densities_of_the_autocast_outputs(posterior):
    torch.manual_seed(0)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(16,), posterior=posterior, num_particles=4).float()
    model.objective = vt.objectives.iwae
    x = _binary(7, 12)
    with torch.autocast("cpu", dtype=BF16):
        torch.manual_seed(1)
        out = model(x)
        logits = model.decoder(out.z)
        log_lik = model.log_likelihood(out.z, x)
    assert logits.dtype == BF16
    assert out.loss.dtype == out.log_w.dtype == out.z.dtype == log_lik.dtype == torch.float32
    # log p(x | z): the Bernoulli density of the promoted logits, computed in float32 without autocast.
    torch.testing.assert_close(log_lik, model.likelihood.log_prob(logits.float(), x), rtol=0, atol=0)
    # The whole bound stays near the float32 one (bfloat16 keeps ~3 significant digits of each
    # logit, so a 12-pixel log-likelihood moves by far less than 5%), and it is not the float32
    # bound itself, which would mean autocast never ran.
    torch.manual_seed(1)
    ref = model(x)
    assert not torch.equal(out.log_w, ref.log_w)
    torch.testing.assert_close(out.log_w, ref.log_w, rtol=0.05, atol=0.05)


def test_compiled_mixed_step_runs_the_eager_autocast_forward():
    # The traced-graph backend runs Dynamo's capture as recorded: the first loss equals the
    # eager autocast step's bit for bit and the captured graph holds the autocast region.
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    batches = [_binary(16, 12, seed) for seed in range(3)]
    torch._dynamo.reset()
    torch.manual_seed(1)
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), objective=vt.objectives.iwae, num_particles=4).float()
    eager = vae.VAE.mlp(12, latent_dim=3, hidden=(8,), objective=vt.objectives.iwae, num_particles=4).float()
    eager.load_state_dict(model.state_dict())
    step = compile_step(
        model, torch.optim.Adam(model.parameters(), 1e-2), autocast_dtype=BF16, options={"backend": backend}
    )
    opt = torch.optim.Adam(eager.parameters(), 1e-2)
    torch.manual_seed(2)
    compiled_losses = [float(step(x).loss.detach()) for x in batches]
    torch.manual_seed(2)
    eager_losses = []
    for x in batches:
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=BF16):
            out = eager(x)
        out.loss.backward()
        opt.step()
        eager_losses.append(float(out.loss.detach()))
    assert len(graphs) == 1
    assert any(n.target is torch.amp.autocast_mode._enter_autocast for n in graphs[0].graph.nodes)
    assert compiled_losses[0] == eager_losses[0]
    assert all(p.dtype == torch.float32 for p in model.parameters())
    # Later steps start from parameters that may differ in their last float32 bit (the compiled
    # graph keeps the log-weight guard, see test_vae_compile_step); a bfloat16 rounding of an
    # activation can then flip by one unit (2**-8 relative), which moves a loss of order 10 by
    # well under 1e-2.
    assert compiled_losses == pytest.approx(eager_losses, rel=1e-2)


def test_bad_autocast_dtype_names_the_culprit():
    model = vae.VAE.mlp(12, latent_dim=3, hidden=(8,))
    with pytest.raises(ValueError, match="autocast_dtype"):
        compile_step(model, autocast_dtype=torch.float64)
