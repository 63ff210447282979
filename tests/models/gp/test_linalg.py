"""Jittered Cholesky: silent when fine, warns per escalation, fails clearly.  (The fused marginals are tested
with their kernel op, tests/kernels/test_whitened_marginals.py.)"""

from __future__ import annotations

import warnings

import pytest
import torch

from vitorch.models import gp


def _spd(m):
    a = torch.randn(m, m)
    return a @ a.T + m * torch.eye(m)


def test_positive_definite_matrix_factors_without_warning():
    k = _spd(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tril = gp.jittered_cholesky(k, "K")
    assert torch.allclose(tril @ tril.T, k, rtol=1e-12, atol=1e-12)


def test_singular_matrix_escalates_with_a_warning_per_retry_then_succeeds():
    x = torch.randn(5, 2)
    k = gp.RBF()(torch.cat([x, x])).detach()  # duplicated inputs: rank 5 of 10
    with pytest.warns(gp.JitterWarning, match="K_mm is not positive definite") as rec:
        tril = gp.jittered_cholesky(k, "K_mm")
    assert len(rec) >= 1
    assert bool(torch.isfinite(tril).all())
    # the jitter actually used is small: the factor reproduces K to the last jitter level tried
    rel = float((tril @ tril.T - k).abs().max() / k.diagonal().mean())
    assert rel < 1e-10 * 10 ** len(rec)


def test_indefinite_matrix_fails_naming_matrix_and_smallest_eigenvalue():
    k = torch.diag(torch.tensor([1.0, 1.0, -0.5]))
    with pytest.warns(gp.JitterWarning), pytest.raises(gp.NotPositiveDefiniteError) as err:
        gp.jittered_cholesky(k, "K_mm", max_tries=3)
    msg = str(err.value)
    assert "K_mm" in msg and "smallest eigenvalue is -5.000e-01" in msg
    assert isinstance(err.value, ValueError)


def test_nan_kernel_matrix_is_a_clear_error():
    k = _spd(3)
    k[0, 1] = float("nan")
    with pytest.raises(ValueError, match="K_mm must be finite; found 1 NaN"):
        gp.jittered_cholesky(k, "K_mm")


def test_float32_escalation_succeeds_where_float64_needs_none():
    x = torch.linspace(0, 1, 60).unsqueeze(-1)
    k64 = gp.RBF(lengthscale=0.3)(x)
    k32 = k64.float()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", gp.JitterWarning)
        tril = gp.jittered_cholesky(k32, "K")
    assert tril.dtype == torch.float32 and bool(torch.isfinite(tril).all())
