"""``vitorch.kernels.tanh``: the fused backend (``2 sigmoid(2x) - 1``) against ``torch.tanh``."""

from __future__ import annotations

import pytest
import torch

import vitorch.kernels as vk
from vitorch.kernels import activation


@pytest.mark.parametrize("shape", [(1,), (7, 3), (2, 5, 13)])
@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_gradcheck_and_gradgradcheck_float64(shape, backend):
    g = torch.Generator().manual_seed(0)
    x = (3 * torch.randn(*shape, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: vk.tanh(t, backend=backend), (x,))
    assert torch.autograd.gradgradcheck(lambda t: vk.tanh(t, backend=backend), (x,))


@pytest.mark.parametrize("dtype,bound", [(torch.float32, 2.4e-7), (torch.float64, 4.5e-16)])
def test_fused_absolute_error_against_tanh(dtype, bound):
    # 2 sigmoid(2x) - 1 rounds at the scale of 1: a few ulps of 1 in absolute terms
    # (float32 ulp(1) = 1.2e-7, float64 2.2e-16), against tanh in float64 (exact enough here).
    x = torch.linspace(-30, 30, 400_001, dtype=torch.float64)
    exact = torch.tanh(x)
    got = vk.tanh(x.to(dtype), backend="fused")
    assert got.dtype == dtype
    assert (got.double() - exact).abs().max().item() <= bound


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_matches_reference_values_and_gradients(dtype):
    g = torch.Generator().manual_seed(1)
    for shape in [(1,), (7,), (127, 3), (1000, 5)]:
        x = (3 * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()
        got, want = vk.tanh(x, backend="fused"), vk.tanh(x, backend="reference")
        tol = 2.4e-7 if dtype == torch.float32 else 4.5e-16  # the formula's absolute error (above)
        torch.testing.assert_close(got, want, rtol=0, atol=2 * tol)
        up = torch.randn(shape, generator=g, dtype=dtype)
        (ga,), (gb,) = torch.autograd.grad(got, x, up), torch.autograd.grad(want, x, up)
        # g (1 - y^2) at outputs that differ by <= tol: gradients differ by <= 2 |g| tol.
        torch.testing.assert_close(ga, gb, rtol=0, atol=2.5 * tol * up.abs().max().item())


def test_reference_is_torch_tanh():
    x = torch.randn(5, 4)
    assert torch.equal(vk.tanh(x, backend="reference"), torch.tanh(x))


def test_auto_follows_the_size_rule(monkeypatch):
    small = torch.randn(activation.FUSED_MIN_NUMEL - 1)
    large = torch.randn(activation.FUSED_MIN_NUMEL)
    assert torch.equal(vk.tanh(small), torch.tanh(small))  # below the rule: torch.tanh itself
    assert torch.equal(vk.tanh(large), vk.tanh(large, backend="fused"))
    assert vk.tanh(large.requires_grad_()).grad_fn.name() == "TanhBackward"  # the fused node
    # torch.func and half precisions take the reference whatever the size.
    big = torch.randn(activation.FUSED_MIN_NUMEL, dtype=torch.float64)
    assert torch.equal(torch.func.vmap(vk.tanh)(big.view(1, -1)).view(-1), torch.tanh(big))
    half = large.detach().bfloat16()
    assert torch.equal(vk.tanh(half), torch.tanh(half))
    with pytest.raises(vk.KernelUnavailableError, match="bfloat16"):
        vk.tanh(half, backend="fused")
    with pytest.raises(vk.KernelUnavailableError, match="no triton backend"):
        vk.tanh(large, backend="triton")
