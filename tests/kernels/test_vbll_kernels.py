"""The VBLL regression kernels: the fused backend against the reference, values and gradients.

Both outputs (``bound [B]`` and ``loss []``) are back-propagated with random upstream
gradients, and each alone (a training step back-propagates ``loss`` only, the fused
backward's uniform path), and every input gradient is compared (float64; the two backends
differ only in summation order); ``gradcheck`` checks the fused backward against finite
differences on both paths.  Dispatch: ``"auto"`` takes the fused backend where it applies and the
reference elsewhere; forcing ``"fused"`` where it cannot run names the reason.
"""

from __future__ import annotations

import pytest
import torch

import vitorch.kernels as vk
from vitorch.kernels import KernelUnavailableError, vbll_heteroscedastic_bound, vbll_regression_bound
from vitorch.kernels.vbll_regression import RowCovariance, reference

SIZES = [(1, 1, 1), (7, 4, 1), (5, 3, 3), (32, 16, 2)]  # (B, D, O)
N = 50  # num_data


def _leaf(t: torch.Tensor) -> torch.Tensor:
    return t.detach().requires_grad_(True)


def _regression_inputs(b, d, o):
    # the raw factor is filled everywhere: its strict upper triangle must be ignored
    return [_leaf(t) for t in (torch.randn(b, d), torch.randn(b, o), torch.randn(o, d),
                               0.3 * torch.randn(o, d, d), 0.3 * torch.randn(o))]  # fmt: skip


def _regression(args, prior_var, noise_prior, backend):
    phi, y, mean, raw, log_v = args
    cov = RowCovariance("scale_tril", (raw,))
    return vbll_regression_bound(phi, y, mean, cov, log_v, prior_var, N, *noise_prior, backend=backend)


def _hetero_inputs(b, d, o, dense_u):
    u_cov = [0.3 * torch.randn(o, d, d) - torch.eye(d)] if dense_u else [0.3 * torch.randn(o, d) - 2]
    tensors = [torch.randn(b, d), torch.randn(b, o), torch.randn(o, d), 0.3 * torch.randn(o, d, d),
               0.3 * torch.randn(o, d), *u_cov, 0.3 * torch.randn(o)]  # fmt: skip
    return [_leaf(t) for t in tensors]


def _hetero(args, dense_u, backend, prior_vars=(0.7, 0.05)):
    phi, y, mean, raw, u_mean, *u_params, offset = args
    cov = RowCovariance("scale_tril", (raw,))
    u_cov = RowCovariance("scale_tril" if dense_u else "diagonal", tuple(u_params))
    return vbll_heteroscedastic_bound(phi, y, mean, cov, u_mean, u_cov, offset, *prior_vars, N, backend=backend)


def _compare(fn, args, names):
    """Fused against reference: both outputs, then every input gradient under random upstreams
    of both outputs, of ``loss`` alone and of ``bound`` alone; returns the first fused gradients."""
    ref, fused = fn(args, "reference"), fn(args, "fused")
    for r, f, what in zip(ref, fused, ("bound", "loss")):
        assert f.shape == r.shape, what
        torch.testing.assert_close(f, r, rtol=1e-12, atol=1e-12, msg=what)
    torch.testing.assert_close(fused[1], -fused[0].mean(), rtol=1e-12, atol=1e-12)
    g_b, g_l = torch.randn_like(ref[0]), torch.randn(())
    first = None
    for upstream in (lambda o: (o[0] * g_b).sum() + o[1] * g_l, lambda o: o[1] * g_l, lambda o: (o[0] * g_b).sum()):
        ref, fused = fn(args, "reference"), fn(args, "fused")
        g_ref = torch.autograd.grad(upstream(ref), args)
        g_fused = torch.autograd.grad(upstream(fused), args)
        for name, a, r in zip(names, g_fused, g_ref):
            torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-11, msg=f"gradient of {name}")
        first = first or g_fused
    return first


@pytest.mark.parametrize("b, d, o", SIZES)
@pytest.mark.parametrize("noise_prior", [(0.0, 0.0), (2.5, 0.1)])
def test_regression_fused_matches_reference(b, d, o, noise_prior):
    args = _regression_inputs(b, d, o)
    names = ["phi", "y", "mean", "raw", "log_v"]
    grads = _compare(lambda a, backend: _regression(a, 0.7, noise_prior, backend), args, names)
    # only the lower triangle of the raw factor is read: the rest gets an exactly zero gradient
    assert bool((grads[3][:, torch.ones(d, d).triu(1).bool()] == 0).all())


@pytest.mark.parametrize("b, d, o", SIZES)
@pytest.mark.parametrize("dense_u", [False, True])
def test_heteroscedastic_fused_matches_reference(b, d, o, dense_u):
    args = _hetero_inputs(b, d, o, dense_u)
    names = ["phi", "y", "mean", "raw", "u_mean", "u_raw" if dense_u else "u_log_var", "offset"]
    grads = _compare(lambda a, backend: _hetero(a, dense_u, backend), args, names)
    unread = torch.ones(d, d).triu(1).bool()
    for g in [grads[3]] + ([grads[5]] if dense_u else []):
        assert bool((g[:, unread] == 0).all())


def test_tensor_prior_variances_go_to_the_reference():
    """The reference takes a 0-d tensor prior variance (same values as the number); the fused backend does not."""
    args = _regression_inputs(6, 3, 2)
    by_number = _regression(args, 0.4, (1.0, 0.2), "fused")
    for a, b in zip(_regression(args, torch.tensor(0.4), (1.0, 0.2), None), by_number):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(KernelUnavailableError, match="prior variance is a tensor"):
        _regression(args, torch.tensor(0.4), (1.0, 0.2), "fused")
    hetero = _hetero_inputs(5, 3, 2, True)
    by_number = _hetero(hetero, True, "fused")
    for a, b in zip(_hetero(hetero, True, None, (torch.tensor(0.7), torch.tensor(0.05))), by_number):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("outputs", ["both", "loss"])
def test_regression_fused_gradcheck(outputs):
    args = _regression_inputs(4, 3, 2)
    pick = (lambda o: o) if outputs == "both" else (lambda o: o[1])
    assert torch.autograd.gradcheck(lambda *a: pick(_regression(a, 0.7, (2.5, 0.1), "fused")), args)


@pytest.mark.parametrize("outputs", ["both", "loss"])
@pytest.mark.parametrize("dense_u", [False, True])
def test_heteroscedastic_fused_gradcheck(dense_u, outputs):
    args = _hetero_inputs(4, 3, 2, dense_u)
    pick = (lambda o: o) if outputs == "both" else (lambda o: o[1])
    assert torch.autograd.gradcheck(lambda *a: pick(_hetero(a, dense_u, "fused")), args)


def test_fixed_noise_and_frozen_inputs_get_no_gradient_work():
    # log_v, phi and y without requires_grad: the fused backward skips them and agrees elsewhere
    phi, y, mean, raw, log_v = _regression_inputs(6, 3, 2)
    args = [phi.detach(), y.detach(), mean, raw, log_v.detach()]
    ref, fused = _regression(args, 0.7, (0.0, 0.0), "reference"), _regression(args, 0.7, (0.0, 0.0), "fused")
    for r, f in zip(ref, fused):
        torch.testing.assert_close(f, r, rtol=1e-12, atol=1e-12)
    g_ref = torch.autograd.grad(ref[1], [mean, raw])
    g_fused = torch.autograd.grad(fused[1], [mean, raw])
    for a, r in zip(g_fused, g_ref):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_auto_takes_fused_for_a_dense_posterior_and_reference_otherwise(monkeypatch, dtype):
    calls = []
    for name in ("RegressionBound", "HeteroscedasticBound", "HeteroscedasticDenseBound"):
        cls = getattr(vk.vbll_regression.fused, name)
        monkeypatch.setattr(cls, "apply", lambda *a, _f=cls.apply, _n=name: calls.append(_n) or _f(*a))
    phi, y, mean, raw, log_v = (t.detach().to(dtype) for t in _regression_inputs(5, 3, 2))
    dense = RowCovariance("scale_tril", (raw,))
    diag = RowCovariance("diagonal", (mean,))
    dense_u = RowCovariance("scale_tril", (raw,))
    vbll_regression_bound(phi, y, mean, dense, log_v, 0.5, N)
    vbll_regression_bound(phi, y, mean, diag, log_v, 0.5, N)
    vbll_regression_bound(phi, y, mean, dense, log_v, torch.tensor(0.5), N)
    vbll_heteroscedastic_bound(phi, y, mean, dense, mean, diag, log_v, 0.5, 0.1, N)
    vbll_heteroscedastic_bound(phi, y, mean, dense, mean, dense_u, log_v, 0.5, 0.1, N)
    vbll_heteroscedastic_bound(phi, y, mean, diag, mean, diag, log_v, 0.5, 0.1, N)
    assert calls == ["RegressionBound", "HeteroscedasticBound", "HeteroscedasticDenseBound"]


def test_half_precision_goes_to_the_reference_and_forcing_fused_names_the_reasons():
    phi, y, mean, raw, log_v = (t.detach() for t in _regression_inputs(5, 3, 2))
    half = [t.to(torch.bfloat16) for t in (phi, y, mean, raw, log_v)]
    cov = RowCovariance("scale_tril", (half[3],))
    assert vk.dispatch.choose("x", *half, fused=vk.vbll_regression.FUSED_DTYPES) == "reference"
    with pytest.raises(KernelUnavailableError, match="bfloat16"):
        vbll_regression_bound(half[0], half[1], half[2], cov, half[4], 0.5, N, backend="fused")
    low_rank = RowCovariance("low_rank", (torch.randn(2, 3, 1), mean))
    with pytest.raises(KernelUnavailableError, match="'low_rank'"):
        vbll_regression_bound(phi, y, mean, low_rank, log_v, 0.5, N, backend="fused")
    with pytest.raises(KernelUnavailableError, match="triton backend was forced"):
        vbll_regression_bound(phi, y, mean, RowCovariance("scale_tril", (raw,)), log_v, 0.5, N,
                              backend="triton")  # fmt: skip


def test_bad_shapes_and_kinds_raise_value_errors():
    phi, y, mean, raw, log_v = (t.detach() for t in _regression_inputs(5, 3, 2))
    cov = RowCovariance("scale_tril", (raw,))
    with pytest.raises(ValueError, match="mean must be"):
        vbll_regression_bound(phi, y, mean[:, :2], cov, log_v, 0.5, N)
    with pytest.raises(ValueError, match="phi must be"):
        vbll_regression_bound(phi, y[:4], mean, cov, log_v, 0.5, N)
    with pytest.raises(ValueError, match="B > 0"):
        vbll_regression_bound(phi[:0], y[:0], mean, cov, log_v, 0.5, N)
    with pytest.raises(ValueError, match="dtype"):
        vbll_regression_bound(phi, y.float(), mean, cov, log_v, 0.5, N)
    with pytest.raises(ValueError, match="num_data"):
        vbll_regression_bound(phi, y, mean, cov, log_v, 0.5, 0)
    with pytest.raises(ValueError, match="kind must be one of"):
        reference.quad_trace_log_det(RowCovariance("banded", (mean,)), phi)


@pytest.mark.parametrize("kind", reference.KINDS)
def test_reference_structures_match_dense_algebra(kind):
    """``quad``, ``trace`` and ``log_det`` of every structure against the dense covariance."""
    o, d, b = 2, 4, 6
    phi = torch.randn(b, d)
    raw = 0.3 * torch.randn(o, d, d)
    log_diag = raw.diagonal(dim1=-2, dim2=-1)
    tril = raw.tril(-1) + torch.diag_embed(log_diag.exp())
    if kind == "scale_tril":
        cov, dense = RowCovariance(kind, (raw,)), tril @ tril.mT
    elif kind == "precision_tril":
        cov, dense = RowCovariance(kind, (raw,)), torch.cholesky_inverse(tril)
    elif kind == "diagonal":
        cov, dense = RowCovariance(kind, (log_diag,)), torch.diag_embed(log_diag.exp())
    else:
        factor = torch.randn(o, d, 2)
        cov, dense = RowCovariance(kind, (factor, log_diag)), factor @ factor.mT + torch.diag_embed(log_diag.exp())
    quad, trace, log_det = reference.quad_trace_log_det(cov, phi)
    torch.testing.assert_close(quad, torch.einsum("nd,ode,ne->no", phi, dense, phi))
    torch.testing.assert_close(trace, dense.diagonal(dim1=-2, dim2=-1).sum(-1))
    torch.testing.assert_close(log_det, torch.linalg.slogdet(dense)[1])
