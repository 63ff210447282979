"""The fused heteroscedastic loss with a dense ``q(U)`` against its autograd specification and the generic path."""

from __future__ import annotations

import math

import pytest
import torch

from vitorch.models.last_layer import Dense, VBLLHeteroscedasticRegression
from vitorch.models.last_layer._fused_heteroscedastic_dense import heteroscedastic_dense_loss, reference_loss

NAMES = ["phi", "y", "packed", "noise_packed"]


def _block(o, d, spare, scale):
    # [F | m] per row (Dense's layout; the strict upper triangle of F is unused storage,
    # filled here to show it is ignored), then the spare entries.  Entries of order
    # d^-1/2 keep exp(-mu + t/2) moderate, so float64 round-off stays near 1e-15 relative.
    return torch.cat([scale * torch.randn(o, d * (d + 1)), torch.randn(o, spare)], -1)


def _inputs(b, d, o, spare_w):
    phi, y = torch.randn(b, d), torch.randn(b, o)
    scale = 0.5 / math.sqrt(d)
    args = [phi, y, _block(o, d, spare_w, scale), _block(o, d, 1, scale)]
    return [t.requires_grad_(True) for t in args]


@pytest.mark.parametrize("b, d, o, spare_w", [(1, 1, 1, 0), (7, 4, 1, 1), (5, 3, 3, 0), (32, 16, 2, 2)])
def test_fused_matches_reference_forward_and_backward(b, d, o, spare_w):
    args = _inputs(b, d, o, spare_w)
    consts = (0.7, 0.05, 50)
    upstream = torch.randn(())
    ref = reference_loss(*args, *consts)
    fused = heteroscedastic_dense_loss(*args, *consts)
    # float64 throughout; the two differ only in summation order
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad(ref * upstream, args)
    g_fused = torch.autograd.grad(fused * upstream, args)
    for name, a, r in zip(NAMES, g_fused, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    # unused storage (each factor's strict upper triangle, the mean block's spare entries)
    # gets an exactly zero gradient; the noise block's spare entry (the offset) does not
    unused = torch.ones(d, d + 1).triu(1)
    unused[:, d] = 0
    for g in g_fused[2:]:
        assert bool((g[:, : d * (d + 1)].view(o, d, d + 1)[:, unused.bool()] == 0).all())
    assert bool((g_fused[2][:, d * (d + 1) :] == 0).all())
    assert bool((g_fused[3][:, -1] != 0).all())


def test_fused_gradcheck():
    args = _inputs(4, 3, 2, 1)
    assert torch.autograd.gradcheck(lambda *t: heteroscedastic_dense_loss(*t, 0.7, 0.05, 50), args)


@pytest.mark.parametrize("o", [1, 2])
def test_head_takes_the_fused_path_and_agrees_with_the_generic_one(o):
    phi, y = torch.randn(9, 4), torch.randn(9, o)
    kw = {"prior_scale": 0.8, "noise_prior_scale": 0.3, "noise_variance": 0.6}
    fused = VBLLHeteroscedasticRegression(4, o, noise_covariance=Dense, **kw)
    # a Dense subclass is neither packed with the offset nor the fused path's exact type
    generic = VBLLHeteroscedasticRegression(4, o, noise_covariance=type("D", (Dense,), {}), **kw)
    assert len(list(fused.parameters())) == 2 and len(list(generic.parameters())) == 3
    torch.testing.assert_close(fused.offset, torch.full((o,), math.log(0.6)))
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.2 * torch.randn_like(p))
        generic.weights.packed.copy_(fused.weights.packed)
        generic.noise_weights.packed.copy_(fused.noise_weights.packed[:, :-1])
        generic.log_noise_offset.copy_(fused.offset)
    a, b = fused.loss(phi, y, 40), generic.loss(phi, y, 40)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    ga = torch.autograd.grad(a, [fused.weights.packed, fused.noise_weights.packed])
    gb = torch.autograd.grad(b, [generic.weights.packed, generic.noise_weights.packed, generic.log_noise_offset])
    torch.testing.assert_close(ga[0], gb[0], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ga[1], torch.cat([gb[1], gb[2][:, None]], -1), rtol=1e-10, atol=1e-12)
    # on the full data set (batch = num_data) the loss is the negated ELBO over N
    torch.testing.assert_close(fused.loss(phi, y, 9), -fused.elbo(phi, y) / 9)
    # the predictive reads the packed offset: equal to the generic head's
    torch.testing.assert_close(fused(phi).predictive.log_prob(y.squeeze(-1) if o == 1 else y),
                               generic(phi).predictive.log_prob(y.squeeze(-1) if o == 1 else y))  # fmt: skip
