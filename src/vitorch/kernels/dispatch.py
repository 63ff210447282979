"""One dispatcher for every fused kernel: the torch reference or the Triton kernel.

The rule (issue 8): CUDA tensors with an importable Triton and a supported dtype go
to the kernel; everything else (CPU tensors, no Triton, float64, an op-specific
limit such as a too-wide event) goes to the torch reference.  The choice can be
forced per call (``backend="torch" | "triton"``) or for a block of code::

    with vt.kernels.backend("triton"):
        z, log_q = vt.kernels.diag_normal_rsample_and_log_prob(loc, scale, (50,))

Forcing ``"triton"`` where the kernel cannot run raises
:class:`KernelUnavailableError` listing every reason instead of silently falling
back: the caller forbade the fallback.  On CPU tensors the kernel runs only under
the Triton interpreter (``TRITON_INTERPRET=1``, read when a call is dispatched,
never at import) and only when forced, since interpreting is far slower than torch.

Nothing here imports Triton at import time; :func:`triton_status` tries once, on
the first call that could use it (CUDA inputs, or a forced kernel).
"""

from __future__ import annotations

import contextvars
import importlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

__all__ = [
    "BACKENDS",
    "KERNEL_DTYPES",
    "KernelUnavailableError",
    "backend",
    "current_backend",
    "choose",
    "triton_status",
]

BACKENDS = ("auto", "torch", "triton")
# Kernels load half inputs, compute in float32 and round once on store.  bfloat16 would work the
# same way but has no parity tolerance in TESTING.md yet, so it goes to the reference.
KERNEL_DTYPES = (torch.float32, torch.float16)

_current: contextvars.ContextVar[str] = contextvars.ContextVar("vitorch_kernel_backend", default="auto")
_triton: tuple[bool, str | None] | None = None


class KernelUnavailableError(RuntimeError):
    """The Triton backend was forced for a call it cannot run.

    References:
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
    """


def _check_name(name: str | None) -> str:
    if name is None:
        return _current.get()
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {name!r}")
    return name


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` (``"auto"``, ``"torch"`` or ``"triton"``) for kernel calls in this block.

    A ``backend=`` argument given to a call still takes precedence.  The setting is
    a context variable, so threads and asyncio tasks do not see each other's.

    References:
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
        Selivanov, *PEP 567 - Context Variables* (2017): per-thread and per-task settings.
    """
    token = _current.set(_check_name(name))
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> str:
    """The backend set by the innermost :func:`backend` block (``"auto"`` outside any).

    References:
        Selivanov, *PEP 567 - Context Variables* (2017).
    """
    return _current.get()


def triton_status() -> tuple[bool, str | None]:
    """``(True, None)`` if Triton imports, else ``(False, reason)``; tried once, then cached.

    References:
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
    """
    global _triton
    if _triton is None:
        try:
            importlib.import_module("triton")
            importlib.import_module("triton.language")
            _triton = (True, None)
        except Exception as err:  # any failure (missing, broken install, no driver) means "unusable"
            _triton = (False, f"triton is not importable ({type(err).__name__}: {err})")
    return _triton


def _interpreting() -> bool:
    # Read per call: the interpreter is a property of the process Triton runs in, not of the import.
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _obstacles(tensors: Sequence[Tensor], dtypes: Sequence[torch.dtype], limits: Sequence[str]) -> list[str]:
    """Every reason the Triton kernel cannot run on ``tensors``."""
    reasons = list(limits)
    if any(t.numel() == 0 for t in tensors):
        reasons.append("an input is empty (nothing to launch)")
    ok, why = triton_status()
    if not ok:
        reasons.append(why)
    devices = {t.device.type for t in tensors}
    if len({t.device for t in tensors}) > 1:
        reasons.append(f"inputs are on several devices {sorted(str(t.device) for t in tensors)}")
    elif devices == {"cpu"} and not _interpreting():
        reasons.append("inputs are on the CPU and TRITON_INTERPRET=1 is not set")
    elif devices - {"cuda", "cpu"}:
        reasons.append(f"device {sorted(devices)} is neither CUDA nor CPU")
    bad = sorted({str(t.dtype) for t in tensors if t.dtype not in dtypes})
    if bad:
        reasons.append(f"dtype {', '.join(bad)} is not one of {[str(d) for d in dtypes]}")
    return reasons


def choose(
    op: str,
    *tensors: Tensor,
    backend: str | None = None,
    dtypes: Sequence[torch.dtype] = KERNEL_DTYPES,
    limits: Sequence[str] = (),
) -> str:
    """Return ``"torch"`` or ``"triton"`` for one call of ``op``.

    Args:
        op: the op's name, for error messages.
        *tensors: the inputs whose device and dtype decide.
        backend: ``"auto"``, ``"torch"``, ``"triton"``, or ``None`` for the
            :func:`backend` context (default ``"auto"``).
        dtypes: dtypes the kernel accepts.
        limits: op-specific reasons the kernel cannot take this call (already
            evaluated by the op, e.g. ``"D = 4096 exceeds 1024"``).

    Raises:
        KernelUnavailableError: ``"triton"`` was forced and the kernel cannot run,
            with every reason.
        ValueError: on an unknown backend name.
    """
    name = _check_name(backend)
    # auto: the kernel only for CUDA tensors (the interpreter is a testing tool, never chosen by
    # itself), and Triton is not even imported for a call that cannot use it.
    if name == "torch" or (name == "auto" and not all(t.device.type == "cuda" for t in tensors)):
        return "torch"
    reasons = _obstacles(tensors, dtypes, limits)
    if name == "triton":
        if reasons:
            raise KernelUnavailableError(f"{op}: the triton backend was forced but cannot run: " + "; ".join(reasons))
        return "triton"
    return "torch" if reasons else "triton"
