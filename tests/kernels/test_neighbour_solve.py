"""The nearest-neighbour conditional solve: the fused backward against autograd through the reference."""

from __future__ import annotations

import pytest
import torch

from vitorch import kernels as vk


def _blocks(batch: int, n: int, generator) -> torch.Tensor:
    a = torch.randn(batch, n, n + 2, generator=generator, dtype=torch.float64)
    return a @ a.mT / (n + 2) + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("n, jitter", [(2, 0.0), (5, 1e-3), (17, 0.0)])
def test_fused_equals_the_reference_values_and_gradients(n, jitter, generator):
    joint = _blocks(7, n, generator)
    g_b = torch.randn(7, n - 1, generator=generator, dtype=torch.float64)
    g_f = torch.randn(7, generator=generator, dtype=torch.float64)
    results = {}
    for backend in ("reference", "fused"):
        x = joint.clone().requires_grad_(True)
        b, f = vk.neighbour_solve(x, jitter, backend=backend)
        ((b * g_b).sum() + (f * g_f).sum()).backward()
        # The blocks are symmetric, and each backend reads each covariance from one triangle or the
        # other: only the gradient's symmetric part is defined (what reaches the kernel's parameters).
        results[backend] = (b.detach(), f.detach(), x.grad + x.grad.mT)
    # Float64 on blocks with condition numbers below ~1e3: the two differ by rounding only.
    for got, want in zip(results["fused"], results["reference"]):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_the_reference_is_the_conditional_of_a_gaussian(generator):
    # b and F are the regression weights and residual variance of the last coordinate on the others.
    joint = _blocks(3, 4, generator)
    b, f = vk.neighbour_solve(joint, backend="reference")
    k_nn, k_nt = joint[:, :3, :3], joint[:, :3, 3]
    torch.testing.assert_close(b, torch.linalg.solve(k_nn, k_nt), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(f, joint[:, 3, 3] - (k_nt * b).sum(-1), rtol=1e-10, atol=1e-12)


def test_bad_blocks_are_counted_and_bad_shapes_refused():
    joint = torch.zeros(4, 3, 3, dtype=torch.float64)
    joint[:2] = torch.eye(3, dtype=torch.float64)
    with pytest.raises(vk.NotPositiveDefiniteBlocks) as err:
        vk.neighbour_solve(joint, backend="fused")
    assert err.value.count == 2
    with pytest.raises(ValueError, match="joint must be"):
        vk.neighbour_solve(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="jitter"):
        vk.neighbour_solve(torch.eye(3).expand(2, 3, 3), -1.0)
