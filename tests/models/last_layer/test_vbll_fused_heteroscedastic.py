"""The fused heteroscedastic loss against its autograd specification and the head's generic path."""

from __future__ import annotations

import pytest
import torch

from vitorch.models.last_layer import Diagonal, VBLLHeteroscedasticRegression
from vitorch.models.last_layer._fused_heteroscedastic import heteroscedastic_loss, reference_loss

NAMES = ["phi", "y", "packed", "u_mean", "u_log_var", "offset"]


def _inputs(b, d, o):
    phi, y, mean, raw = torch.randn(b, d), torch.randn(b, o), torch.randn(o, d), 0.3 * torch.randn(o, d, d)
    # [F | m] per row, the layout of vitorch's Dense posterior (the upper triangle of F is
    # unused storage, filled here to show it is ignored), and one unused spare entry
    packed = torch.cat([torch.cat([raw, mean[..., None]], -1).flatten(1), torch.randn(o, 1)], -1)
    rest = [0.3 * torch.randn(o, d), 0.3 * torch.randn(o, d), 0.3 * torch.randn(o)]
    return [t.requires_grad_(True) for t in [phi, y, packed, *rest]]


@pytest.mark.parametrize("b, d, o", [(1, 1, 1), (7, 4, 1), (5, 3, 3), (32, 16, 2)])
def test_fused_matches_reference_forward_and_backward(b, d, o):
    args = _inputs(b, d, o)
    consts = (0.7, 0.05, 50)
    upstream = torch.randn(())
    ref = reference_loss(*args, *consts)
    fused = heteroscedastic_loss(*args, *consts)
    # float64 throughout; the two differ only in summation order
    torch.testing.assert_close(fused, ref, rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad(ref * upstream, args)
    g_fused = torch.autograd.grad(fused * upstream, args)
    for name, a, r in zip(NAMES, g_fused, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12, msg=f"gradient of {name}")
    # unused storage (the factor's strict upper triangle, the spare entry) gets an exactly zero gradient
    unused = torch.ones(d, d + 1).triu(1)
    unused[:, d] = 0
    g_packed = g_fused[2]
    assert bool((g_packed[:, : d * (d + 1)].view(o, d, d + 1)[:, unused.bool()] == 0).all())
    assert bool((g_packed[:, -1] == 0).all())


def test_fused_gradcheck():
    args = _inputs(4, 3, 2)
    assert torch.autograd.gradcheck(lambda *t: heteroscedastic_loss(*t, 0.7, 0.05, 50), args)


@pytest.mark.parametrize("o", [1, 2])
def test_head_loss_takes_the_fused_path_and_agrees_with_the_generic_one(o):
    phi, y = torch.randn(9, 4), torch.randn(9, o)
    fused = VBLLHeteroscedasticRegression(4, o, prior_scale=0.8, noise_prior_scale=0.3)
    # a Diagonal subclass is not the fused path's exact type, so this head takes the generic one
    generic = VBLLHeteroscedasticRegression(
        4, o, prior_scale=0.8, noise_prior_scale=0.3, noise_covariance=type("Diag", (Diagonal,), {})
    )
    generic.load_state_dict(fused.state_dict())
    with torch.no_grad():
        for head in (fused, generic):
            torch.manual_seed(3)
            for p in head.parameters():
                p.add_(0.2 * torch.randn_like(p))
    a, b = fused.loss(phi, y, 40), generic.loss(phi, y, 40)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    ga = torch.autograd.grad(a, list(fused.parameters()))
    gb = torch.autograd.grad(b, list(generic.parameters()))
    for x, z in zip(ga, gb):
        torch.testing.assert_close(x, z, rtol=1e-10, atol=1e-12)
    # on the full data set (batch = num_data) the loss is the negated ELBO over N
    torch.testing.assert_close(fused.loss(phi, y, 9), -fused.elbo(phi, y) / 9)


def test_loss_checks_shapes_but_not_values():
    head = VBLLHeteroscedasticRegression(4)
    phi, y = torch.randn(6, 4), torch.randn(6)
    with pytest.raises(ValueError, match="phi must have shape"):
        head.loss(phi[:, :3], y, 10)
    with pytest.raises(ValueError, match="num_data"):
        head.loss(phi, y, 3)
    bad = y.clone()
    bad[1] = float("nan")
    with pytest.raises(ValueError, match="y must be finite"):
        head.elbo(phi, bad)
    assert not torch.isfinite(head.loss(phi, bad, 10))
