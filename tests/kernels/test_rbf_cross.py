"""``vitorch.kernels.rbf_cross``: the fused backend against the torch reference (values, gradients, gradcheck)."""

from __future__ import annotations

import pytest
import torch

import vitorch.kernels as vk
from vitorch.kernels import rbf


def _inputs(m, b, d, dtype, seed=0, same=False):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, d, generator=g, dtype=dtype).requires_grad_()
    bb = a if same else torch.randn(b, d, generator=g, dtype=dtype).requires_grad_()
    log_var = torch.tensor(0.3, dtype=dtype).requires_grad_()
    return a, bb, log_var


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_gradcheck_float64(backend):
    a, b, log_var = _inputs(4, 5, 3, torch.float64)
    assert torch.autograd.gradcheck(lambda a, b, v: vk.rbf_cross(a, b, v, backend=backend), (a, b, log_var))
    # the symmetric case k(X, X): one input feeds both sides, and its gradients add up
    assert torch.autograd.gradcheck(lambda a, v: vk.rbf_cross(a, a, v, backend=backend), (a, log_var))


def test_reference_is_twice_differentiable_and_fused_refuses_loudly():
    a, b, log_var = _inputs(3, 4, 2, torch.float64)
    f = lambda a, b, v: vk.rbf_cross(a, b, v, backend="reference")  # noqa: E731
    assert torch.autograd.gradgradcheck(f, (a, b, log_var))
    k = vk.rbf_cross(a, b, log_var, backend="fused")
    (ga,) = torch.autograd.grad(k.sum(), a, create_graph=True)
    with pytest.raises(RuntimeError):  # no silent zero second derivative: the first one carries no graph
        torch.autograd.grad(ga.sum(), a)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("m, b, same", [(1, 1, False), (7, 127, False), (33, 1000, False), (40, 40, True)])
def test_fused_matches_reference_values_and_gradients(dtype, m, b, same):
    a, bb, log_var = _inputs(m, b, 3, dtype, seed=m + b, same=same)
    got, want = vk.rbf_cross(a, bb, log_var, backend="fused"), vk.rbf_cross(a, bb, log_var, backend="reference")
    eps = torch.finfo(dtype).eps
    # Both evaluate exp(log s^2 - r^2 / 2) from the same expanded r^2 (|a|^2 + |b|^2 - 2 a.b, D = 3 terms
    # of size <= ~20); the sums round in another order, so the exponents differ by a few ulps of 20:
    # relative error of K <= 64 eps * 20 with a factor 2 of room.
    torch.testing.assert_close(got, want, rtol=64 * 20 * eps, atol=0)
    up = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    inputs = (a, log_var) if same else (a, bb, log_var)
    g_fused = torch.autograd.grad(got, inputs, up)
    g_ref = torch.autograd.grad(want, inputs, up)
    # Each gradient entry is a sum of terms P_ij (b_j - a_i) (or P_ij, for log s^2) with P = up * K; its
    # rounding error is at most (64 * 20 + n) eps times the sum of the terms' magnitudes (K's rounding,
    # above, plus a sum of n <= max(M, B) terms), which bounds the entry's own scale.
    with torch.no_grad():
        p = (up * got).abs()
        big = float(a.abs().max() + bb.abs().max())
        mags = [p.sum(-1, keepdim=True) * big] + ([] if same else [p.sum(0).unsqueeze(-1) * big]) + [p.sum()]
        if same:
            mags[0] = (p.sum(-1) + p.sum(0)).unsqueeze(-1) * big
    for x, y, mag in zip(g_fused, g_ref, mags):
        assert bool(((x - y).abs() <= (64 * 20 + max(m, b)) * eps * mag).all())


def test_auto_takes_fused_for_float_and_reference_elsewhere():
    a, b, log_var = _inputs(5, 6, 2, torch.float32)
    assert vk.rbf_cross(a, b, log_var).grad_fn.name() == "RBFCrossBackward"
    half = [t.detach().bfloat16() for t in (a, b, log_var)]
    assert torch.equal(vk.rbf_cross(*half), rbf.reference.rbf_cross(*half))
    with pytest.raises(vk.KernelUnavailableError, match="bfloat16"):
        vk.rbf_cross(*half, backend="fused")
    with pytest.raises(vk.KernelUnavailableError):
        vk.rbf_cross(a, b, log_var, backend="triton")
    # torch.func transforms take the reference (the fused node has no batching rule)
    grads = torch.func.grad(lambda v: vk.rbf_cross(a.detach(), b.detach(), v).sum())(log_var.detach())
    torch.testing.assert_close(grads, vk.rbf_cross(a, b, log_var).sum().detach())
    with vk.backend("reference"):
        assert vk.rbf_cross(a, b, log_var).grad_fn.name() != "RBFCrossBackward"


def test_bad_shapes_raise_with_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 2\) and \(4, 3\)"):
        vk.rbf_cross(torch.randn(3, 2), torch.randn(4, 3), torch.tensor(0.0))
    with pytest.raises(ValueError, match="log_var must be a scalar"):
        vk.rbf_cross(torch.randn(3, 2), torch.randn(4, 2), torch.zeros(1))
