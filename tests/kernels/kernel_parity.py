"""Shared machinery of the kernel parity tests (TESTING.md family 21).

Every parity check runs the op three times on the same inputs (exactly
representable in the tested dtype) and the same random upstream gradients:
the Triton kernel in the tested dtype, the torch reference in float64 (the
truth) and the torch reference in float32.  It then requires, for every output
and every input gradient,

    |kernel - truth| <= atol + rtol |truth| + 4 max|ref32 - truth|,

with TESTING.md's ``(rtol, atol) = (1.3e-6, 1e-5)`` in float32 and ``1e-3`` in
float16, and ``truth`` rounded to the tested dtype first (the best answer that
dtype can hold, which also makes ``-inf`` compare equal to ``-inf``).  The last
term is the reference's own float32 error on these very inputs: a gradient that
sums ``N`` row contributions or a chain of ``L`` flow layers rounds differently in
any two summation orders, by an amount set by the problem's conditioning, not by
the kernel.  A kernel passes if it is no worse than four times torch's own
float32 evaluation beyond the fixed tolerance; a wrong formula misses by orders
of magnitude more.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest
import torch

# bfloat16 (CUDA only: the Triton interpreter mishandles it) keeps float16's two units of
# roundoff, scaled to its 8-bit significand: 2 * 2**-8 ~ 8e-3 (float16: 2 * 2**-11 ~ 1e-3).
TOL = {torch.float32: (1.3e-6, 1e-5), torch.float16: (1e-3, 1e-3), torch.bfloat16: (8e-3, 8e-3)}
SIZES = (1, 7, 127, 1000)

# Devices: the CPU under the Triton interpreter, and CUDA when there is one (marker gpu).
DEVICES = [pytest.param("cpu", id="interpreter"), pytest.param("cuda", id="cuda", marks=pytest.mark.gpu)]


def require_device(device: str) -> None:
    """Skip, with the reason, when ``device`` cannot run Triton kernels in this process."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("CPU parity tests need the Triton interpreter: run with TRITON_INTERPRET=1")


def strided(values: torch.Tensor, dtype: torch.dtype, device: str, contiguous: bool) -> torch.Tensor:
    """``values`` in ``dtype`` on ``device``; when not ``contiguous``, a view with stride 2 in its last dim."""
    if contiguous:
        return values.to(dtype=dtype, device=device)
    big = torch.zeros(values.shape[:-1] + (2 * values.shape[-1],), dtype=dtype, device=device)
    big[..., ::2] = values.to(dtype)
    return big[..., ::2]


def _run(fn: Callable, inputs: dict, grad_names: Sequence[str], grads_out: Sequence[torch.Tensor | None], cast):
    leaves = {k: (cast(v).detach().requires_grad_(k in grad_names) if isinstance(v, torch.Tensor) else v)
              for k, v in inputs.items()}  # fmt: skip
    outs = fn(**leaves)
    outs = outs if isinstance(outs, tuple) else (outs,)
    total = sum((o * cast(g)).sum() for o, g in zip(outs, grads_out) if g is not None)
    wrt = [leaves[k] for k in grad_names]
    grads = torch.autograd.grad(total, wrt) if wrt else ()
    return [o.detach() for o in outs], list(grads)


def check(
    kernel: Callable,
    reference: Callable,
    inputs: dict,
    grad_names: Sequence[str],
    dtype: torch.dtype,
    differentiable: Sequence[bool] | None = None,
) -> None:
    """Compare ``kernel(**inputs)`` with ``reference`` in float64 and float32, values and gradients.

    ``inputs`` holds tensors already in ``dtype`` (possibly strided) on the test
    device; ``differentiable[i]`` says whether output ``i`` gets an upstream
    gradient (default: all).
    """
    if dtype == torch.bfloat16 and all(t.device.type == "cpu" for t in inputs.values() if torch.is_tensor(t)):
        pytest.skip("bfloat16 parity runs on CUDA only (the Triton interpreter mishandles bfloat16)")
    outs, _ = _run(kernel, inputs, (), [None], lambda t: t)
    flags = differentiable if differentiable is not None else [True] * len(outs)
    # Upstream gradients drawn in the tested dtype, so all three runs see the same numbers.
    g = [torch.randn(o.shape, dtype=torch.float64).to(dtype).to(o.device) if f else None for o, f in zip(outs, flags)]
    k_out, k_grad = _run(kernel, inputs, grad_names, g, lambda t: t)
    t_out, t_grad = _run(reference, inputs, grad_names, g, lambda t: t.detach().cpu().double())
    r_out, r_grad = _run(reference, inputs, grad_names, g, lambda t: t.detach().cpu().float())
    rtol, atol = TOL[dtype]
    names = [f"output {i}" for i in range(len(k_out))] + [f"d/d{n}" for n in grad_names]
    for name, k, t, r in zip(names, k_out + k_grad, t_out + t_grad, r_out + r_grad):
        assert k.shape == t.shape, f"{name}: shape {tuple(k.shape)} != {tuple(t.shape)}"
        if not k.is_floating_point():
            assert torch.equal(k.cpu(), t.to(k.dtype)), name
            continue
        truth = t.to(k.dtype).double()
        k = k.detach().cpu().double()
        finite = torch.isfinite(truth) & torch.isfinite(r.double())
        e32 = (r.double() - t)[finite].abs().max().item() if bool(finite.any()) else 0.0
        bound = atol + rtol * truth.abs() + 4 * e32
        ok = ((k - truth).abs() <= bound) | (k == truth)
        assert bool(ok.all()), (
            f"{name}: kernel differs from the float64 reference by up to "
            f"{(k - truth)[~ok].abs().max().item():.3g} (bound {atol} + {rtol}|truth| + 4 * {e32:.3g}); "
            f"kernel {k[~ok][:4].tolist()}, truth {truth[~ok][:4].tolist()}"
        )
