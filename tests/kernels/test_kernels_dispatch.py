"""The kernel dispatcher: backend choice, overrides, clear errors, and no Triton at import (CPU, default suite)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from vitorch import kernels as vk
from vitorch.kernels import dispatch

FUSED = (torch.float32, torch.float64)  # the dtypes a made-up op's fused backend supports


def test_import_vitorch_never_imports_triton():
    code = "import sys, vitorch, vitorch.kernels; vitorch.kernels.logsumexp(__import__('torch').zeros(3, 2)); "
    code += "print('triton' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_auto_never_picks_triton(monkeypatch):
    # Not under the interpreter, and not even with Triton importable: Triton is opt-in.
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.setattr(dispatch, "_triton", (True, None))
    x = torch.randn(4, 3, dtype=torch.float32)
    assert dispatch.choose("op", x) == "reference"
    assert dispatch.choose("op", x, fused=FUSED) == "fused"
    assert dispatch.choose("op", x, backend="reference") == "reference"


def test_auto_picks_fused_only_at_or_above_the_size_rule():
    small, large = torch.randn(3, 4), torch.randn(5, 20)
    assert dispatch.choose("op", small, fused=FUSED, fused_min_numel=100) == "reference"
    assert dispatch.choose("op", large, fused=FUSED, fused_min_numel=100) == "fused"
    assert dispatch.choose("op", torch.randn(10, 10), fused=FUSED, fused_min_numel=100) == "fused"
    # The largest input decides: a small parameter beside a large batch is still a large call.
    assert dispatch.choose("op", small, large, fused=FUSED, fused_min_numel=100) == "fused"
    assert dispatch.choose("op", small, fused=FUSED) == "fused"  # no size rule: any size


def test_auto_falls_back_to_the_reference_for_dtype_limits_or_no_fused_backend():
    x = torch.randn(50, 50)
    assert dispatch.choose("op", x, fused_min_numel=1) == "reference"  # the op has no fused backend
    assert dispatch.choose("op", x.half(), fused=FUSED) == "reference"
    assert dispatch.choose("op", x, fused=FUSED, limits=["D = 50 exceeds 32"]) == "reference"


def test_forcing_fused_ignores_the_size_rule_and_raises_with_every_reason():
    x = torch.randn(2, 2)
    assert dispatch.choose("op", x, backend="fused", fused=FUSED, fused_min_numel=10**6) == "fused"
    with pytest.raises(vk.KernelUnavailableError, match="my_op: the fused backend .* no fused backend"):
        dispatch.choose("my_op", x, backend="fused")
    with pytest.raises(vk.KernelUnavailableError) as err:
        dispatch.choose("my_op", x.half(), backend="fused", fused=FUSED, limits=["D = 2 is odd"])
    assert "float16" in str(err.value) and "D = 2 is odd" in str(err.value)
    # Through a public op without a fused backend.
    with pytest.raises(vk.KernelUnavailableError, match="logsumexp"):
        vk.logsumexp(x, backend="fused")


def test_forcing_triton_where_it_cannot_run_lists_every_reason(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(4, 3, dtype=torch.float64)
    with pytest.raises(vk.KernelUnavailableError) as err:
        dispatch.choose("my_op", x, backend="triton", limits=["D = 9999 exceeds 128"])
    msg = str(err.value)
    assert "my_op" in msg and "TRITON_INTERPRET=1" in msg and "float64" in msg and "D = 9999" in msg
    # Through a public op as well.
    with pytest.raises(vk.KernelUnavailableError, match="logsumexp"):
        vk.logsumexp(x, backend="triton")


def test_forcing_triton_on_an_op_without_a_triton_backend(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(4, 3, dtype=torch.float32)
    with pytest.raises(vk.KernelUnavailableError, match="my_op: the triton backend .* no triton backend"):
        dispatch.choose("my_op", x, backend="triton", dtypes=None, fused=FUSED)
    assert dispatch.choose("my_op", x, dtypes=None, fused=FUSED) == "fused"


def test_missing_triton_raises_with_the_reason(monkeypatch):
    monkeypatch.setattr(dispatch, "_triton", (False, "triton is not importable (ModuleNotFoundError: no triton)"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    x = torch.randn(5, 2, dtype=torch.float32)
    assert dispatch.choose("op", x) == "reference"
    with pytest.raises(vk.KernelUnavailableError, match="ModuleNotFoundError"):
        dispatch.choose("op", x, backend="triton")


def test_torch_is_an_alias_of_reference():
    x = torch.randn(3, 2)
    assert dispatch.choose("op", x, backend="torch", fused=FUSED) == "reference"
    with vk.backend("torch"):
        assert vk.current_backend() == "reference"
        assert dispatch.choose("op", x, fused=FUSED) == "reference"
    torch.testing.assert_close(vk.logsumexp(x, backend="torch"), vk.logsumexp(x, backend="reference"))


def test_context_manager_nests_restores_and_yields_to_the_argument(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    x = torch.randn(3, 2, dtype=torch.float32)
    assert vk.current_backend() == "auto"
    with vk.backend("triton"):
        assert vk.current_backend() == "triton"
        with pytest.raises(vk.KernelUnavailableError):
            dispatch.choose("op", x)
        assert dispatch.choose("op", x, backend="reference") == "reference"  # the argument wins
        with vk.backend("fused"):
            assert dispatch.choose("op", x, fused=FUSED) == "fused"
            with vk.backend("reference"):
                assert dispatch.choose("op", x, fused=FUSED) == "reference"
        assert vk.current_backend() == "triton"
    assert vk.current_backend() == "auto"


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        with vk.backend("cuda"):
            pass
    with pytest.raises(ValueError, match="'numba'"):
        vk.logsumexp(torch.zeros(2, 2), backend="numba")


def test_op_dtype_lists_differ():
    """Gamma accepts float64 (it computes in float64); the others take float32 and half precision."""
    from vitorch.kernels import gamma

    assert torch.float64 in gamma._DTYPES and torch.float16 not in gamma._DTYPES
    assert torch.float64 not in dispatch.KERNEL_DTYPES and torch.float16 in dispatch.KERNEL_DTYPES


def test_empty_inputs_never_launch(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(vk.KernelUnavailableError, match="empty"):
        dispatch.choose("op", torch.zeros(0, 3, dtype=torch.float32), backend="triton")
    with pytest.raises(vk.KernelUnavailableError, match="K = 0"):
        vk.diag_normal_rsample_and_log_prob(torch.zeros(2, 3), torch.ones(2, 3), (0,), backend="triton")
    z, log_q = vk.diag_normal_rsample_and_log_prob(torch.zeros(2, 3), torch.ones(2, 3), (0,))
    assert z.shape == (0, 2, 3) and log_q.shape == (0, 2)
