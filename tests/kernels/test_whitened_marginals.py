"""``vitorch.kernels.whitened_marginals``: both backends against the definition and against each other
(values, the Cholesky factor, gradients with a random upstream, gradcheck in float64)."""

from __future__ import annotations

import pytest
import torch

import vitorch.kernels as vk


def _inputs(m, b, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(m, m, generator=g, dtype=dtype)
    k0 = (a @ a.mT / m + torch.eye(m, dtype=dtype)).requires_grad_()  # eigenvalues in [1, ~5]: cond(K_mm) <= ~5
    k_mb = (0.5 * torch.randn(m, b, generator=g, dtype=dtype)).requires_grad_()
    loc = torch.randn(m, generator=g, dtype=dtype).requires_grad_()
    root = (torch.eye(m, dtype=dtype) + 0.3 * torch.randn(m, m, generator=g, dtype=dtype).tril()).requires_grad_()
    return k0, k_mb, loc, root


def _op(backend, whitened=True, cholesky=torch.linalg.cholesky):
    def f(k0, k_mb, loc, root):
        k_mm = 0.5 * (k0 + k0.mT)  # gradcheck perturbs entries one at a time: keep K_mm symmetric
        return vk.whitened_marginals(k_mm, k_mb, loc, root, cholesky=cholesky, whitened=whitened, backend=backend)

    return f


def _jittered(k):
    return torch.linalg.cholesky(k + 1e-3 * torch.eye(k.shape[-1], dtype=k.dtype))


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("whitened", [True, False])
def test_gradcheck_float64(backend, whitened):
    inputs = _inputs(5, 7, torch.float64)
    assert torch.autograd.gradcheck(_op(backend, whitened), inputs)
    assert torch.autograd.gradcheck(_op(backend, whitened, cholesky=_jittered), inputs)


@pytest.mark.parametrize("backend", ["fused", "reference"])
def test_equals_the_definition(backend):
    k_mm, k_mb, loc, root = (t.detach() for t in _inputs(6, 9, torch.float64))
    mean, var, tril = vk.whitened_marginals(k_mm, k_mb, loc, root, backend=backend)
    # u = L v, q(u) = N(L m, L S L^T): mean K_bm K_mm^{-1} L m, variance update k_bm K^{-1} (L S L^T - K) K^{-1} k_mb
    p = torch.linalg.solve(k_mm, k_mb)  # K_mm^{-1} K_mb, the unwhitened projection
    s_u = tril @ root @ root.mT @ tril.mT
    # float64 solves with cond(K_mm) <= 5 agree to ~1e-14; 1e-10 leaves room for sums of M terms
    torch.testing.assert_close(tril, torch.linalg.cholesky(k_mm), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(mean, p.mT @ (tril @ loc), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var, ((s_u - k_mm) @ p * p).sum(0), rtol=1e-10, atol=1e-12)
    # the unwhitened form of the same q gives the same marginals
    mean_u, var_u, _ = vk.whitened_marginals(k_mm, k_mb, tril @ loc, tril @ root, whitened=False, backend=backend)
    torch.testing.assert_close(mean_u, mean, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(var_u, var, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("whitened", [True, False])
@pytest.mark.parametrize("m, b", [(1, 1), (7, 127), (33, 1000)])
def test_fused_matches_reference_values_and_gradients(dtype, whitened, m, b):
    inputs = _inputs(m, b, dtype, seed=m + b)
    got = _op("fused", whitened, _jittered)(*inputs)
    want = _op("reference", whitened, _jittered)(*inputs)
    eps = torch.finfo(dtype).eps
    g = torch.Generator().manual_seed(1)
    ups = [torch.randn(t.shape, generator=g, dtype=dtype) for t in got]
    # The backends differ only in rounding: multiplying by L^{-1} against triangular solves, one GEMM order
    # against another.  With cond(K_mm) <= 5 and inner sums of length M, each result is off by at most
    # ~ M eps times the sum of its terms' magnitudes; 8 (M + 8) eps relative to each output's scale (its
    # largest entry, or 1) covers it with room, and is still ~1e-5 in float32 at M = 33, far below a bug.
    rel = 8 * (m + 8) * eps
    for x, y in zip(got, want):
        scale = max(1.0, float(y.detach().abs().max()))
        torch.testing.assert_close(x, y, rtol=0, atol=rel * scale)
    g_fused = torch.autograd.grad(got, inputs, ups)
    g_ref = torch.autograd.grad(want, inputs, ups)
    # The gradients are the same products taken backwards (plus sums over B of like-signed terms, whose
    # rounding is relative): the same allowance relative to each gradient's largest entry.
    for name, x, y in zip(("K_mm", "K_mb", "loc", "root"), g_fused, g_ref):
        scale = max(1.0, float(y.abs().max()))
        assert float((x - y).abs().max()) <= rel * scale, name


def test_auto_takes_fused_for_float_and_reference_elsewhere():
    inputs = [t.detach() for t in _inputs(4, 5, torch.float32)]
    k_mm, k_mb, loc, root = inputs
    mean, _, _ = vk.whitened_marginals(k_mm, k_mb, loc.requires_grad_(), root)
    assert mean.grad_fn.name() == "WhitenedMarginalsBackward"
    half = [t.detach().bfloat16() for t in inputs]
    with pytest.raises(vk.KernelUnavailableError, match="bfloat16"):
        vk.whitened_marginals(*half, backend="fused")
    with pytest.raises(vk.KernelUnavailableError):
        vk.whitened_marginals(*inputs, backend="triton")
    with vk.backend("reference"):
        mean, _, _ = vk.whitened_marginals(k_mm, k_mb, loc, root)
        assert mean.grad_fn.name() != "WhitenedMarginalsBackward"
    # torch.func transforms take the reference (the fused nodes have no batching rule)
    grad = torch.func.grad(lambda l: vk.whitened_marginals(k_mm, k_mb, l, root)[0].sum())(loc.detach())
    torch.testing.assert_close(
        grad, torch.linalg.solve_triangular(torch.linalg.cholesky(k_mm), k_mb, upper=False).sum(-1)
    )


def test_the_cholesky_callable_is_used_by_both_backends():
    k_mm, k_mb, loc, root = (t.detach() for t in _inputs(4, 3, torch.float64))
    calls = []

    def chol(k):
        calls.append(k.shape)
        return _jittered(k)

    for backend in ("fused", "reference"):
        _, _, tril = vk.whitened_marginals(k_mm, k_mb, loc, root, cholesky=chol, backend=backend)
        torch.testing.assert_close(tril, _jittered(k_mm))
    assert calls == [(4, 4), (4, 4)]


def test_bad_shapes_raise_with_every_shape():
    k_mm, k_mb, loc, root = (t.detach() for t in _inputs(4, 3, torch.float64))
    with pytest.raises(ValueError, match=r"\(4, 4\), \(3, 3\), \(4,\), \(4, 4\)"):
        vk.whitened_marginals(k_mm, k_mb[:3], loc, root)
    with pytest.raises(ValueError, match=r"loc \[M\]"):
        vk.whitened_marginals(k_mm, k_mb, loc[:2], root)
