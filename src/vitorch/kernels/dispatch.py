"""One dispatcher for every op in `vitorch.kernels`: the reference, the fused-torch or the Triton backend.

Each op in ``kernels/<op>/`` has up to three backends:

* ``"reference"`` (``reference.py``): readable torch, the specification and the CPU path.
  Every op has one; it runs on every device and dtype.
* ``"fused"`` (``fused.py``): hand-written ``torch.autograd.Function`` classes in plain torch
  whose backward reuses what the forward computed. An op declares it by passing
  ``fused=`` (the dtypes it supports) to `choose`.
* ``"triton"`` (``triton.py``): Triton kernels, imported only when a call is sent there.

The rule under ``"auto"`` (the default) is one line per op:

* ``"fused"`` if the op has a fused backend, every input's dtype is in its ``fused=``
  dtypes, no op-specific limit applies, and the largest input has at least
  ``fused_min_numel`` elements (the op's one documented size rule; ``None`` means any size);
* ``"reference"`` otherwise.

**Triton is never chosen by** ``"auto"``: it is opt-in until a parity run on a real GPU is
committed (the kernels have been checked only under the Triton interpreter and compiled ahead
of time).  Force it per call (``backend="triton"``) or for a block of code::

    with vt.kernels.backend("triton"):
        z, log_q = vt.kernels.diag_normal_rsample_and_log_prob(loc, scale, (50,))

Forcing a backend the op cannot run (no fused backend, an unsupported dtype, an op limit,
no Triton, CPU tensors without ``TRITON_INTERPRET=1``) raises `KernelUnavailableError`
listing every reason instead of silently falling back: the caller forbade the fallback.
``"torch"`` is accepted as the old name of ``"reference"``.

Nothing here imports Triton at import time; `triton_status` tries once, on the first
call forced to Triton.
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
    "ALIASES",
    "KERNEL_DTYPES",
    "KernelUnavailableError",
    "backend",
    "current_backend",
    "choose",
    "triton_status",
]

BACKENDS = ("auto", "reference", "fused", "triton")
# Old names still accepted (the reference used to be called "torch").
ALIASES = {"torch": "reference"}
# Triton kernels load half inputs (float16, bfloat16), compute in float32 and round once on store.
KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)

_current: contextvars.ContextVar[str] = contextvars.ContextVar("vitorch_kernel_backend", default="auto")
_triton: tuple[bool, str | None] | None = None


class KernelUnavailableError(RuntimeError):
    """A backend was forced for a call it cannot run; the message lists every reason.

    References:
        Tillet, Kung & Cox, *Triton: An Intermediate Language and Compiler for Tiled Neural Network
        Computations* (MAPL 2019).
    """


def _check_name(name: str | None) -> str:
    if name is None:
        return _current.get()
    name = ALIASES.get(name, name)
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS} (or the alias 'torch'); got {name!r}")
    return name


@contextmanager
def backend(name: str) -> Iterator[None]:
    """Use backend ``name`` (``"auto"``, ``"reference"``, ``"fused"`` or ``"triton"``) in this block.

    A ``backend=`` argument given to a call still takes precedence.  The setting is
    a context variable, so threads and asyncio tasks do not see each other's.

    Args:
        name: a name in `BACKENDS`, or ``"torch"`` (the old name of ``"reference"``).

    Raises:
        ValueError: on an unknown name.

    References:
        Selivanov, *PEP 567 - Context Variables* (2017): per-thread and per-task settings.
    """
    token = _current.set(_check_name(name))
    try:
        yield
    finally:
        _current.reset(token)


def current_backend() -> str:
    """The backend set by the innermost `backend` block (``"auto"`` outside any).

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


def _bad_dtypes(tensors: Sequence[Tensor], dtypes: Sequence[torch.dtype], what: str) -> list[str]:
    bad = sorted({str(t.dtype) for t in tensors if t.dtype not in dtypes})
    return [f"dtype {', '.join(bad)} is not one of the {what} dtypes {[str(d) for d in dtypes]}"] if bad else []


def _fused_obstacles(
    tensors: Sequence[Tensor], fused: Sequence[torch.dtype] | None, limits: Sequence[str]
) -> list[str]:
    """Every reason the fused-torch backend cannot run on ``tensors`` (size is not one: it is a preference)."""
    if fused is None:
        return ["the op has no fused backend"]
    reasons = list(limits) + _bad_dtypes(tensors, fused, "fused")
    if _functorch_active():
        reasons.append("a torch.func transform is active (a hand-written autograd node has no batching rule)")
    return reasons


def _functorch_active() -> bool:
    """Whether a ``torch.func`` transform (vmap, grad, jacrev...) is running."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def _triton_obstacles(
    tensors: Sequence[Tensor], dtypes: Sequence[torch.dtype] | None, limits: Sequence[str]
) -> list[str]:
    """Every reason the Triton kernel cannot run on ``tensors``."""
    if dtypes is None:
        return ["the op has no triton backend"]
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
    return reasons + _bad_dtypes(tensors, dtypes, "triton")


def choose(
    op: str,
    *tensors: Tensor,
    backend: str | None = None,
    dtypes: Sequence[torch.dtype] | None = KERNEL_DTYPES,
    limits: Sequence[str] = (),
    fused: Sequence[torch.dtype] | None = None,
    fused_min_numel: int | None = None,
) -> str:
    """Return ``"reference"``, ``"fused"`` or ``"triton"`` for one call of ``op``.

    Args:
        op: the op's name, for error messages.
        *tensors: the inputs whose device, dtype and size decide (pass only those whose
            dtype matters; every one is checked against the dtype lists).
        backend: ``"auto"``, ``"reference"`` (alias ``"torch"``), ``"fused"``, ``"triton"``,
            or ``None`` for the `backend` context (default ``"auto"``).
        dtypes: dtypes the Triton kernel accepts, or ``None`` if the op has no Triton backend.
        limits: op-specific reasons the fused and Triton backends cannot take this call,
            already evaluated by the op (e.g. ``"D = 4096 exceeds 1024"``).
        fused: dtypes the op's fused-torch backend accepts, or ``None`` if it has none.
        fused_min_numel: the op's size rule: ``"auto"`` picks the fused backend only when
            the largest input has at least this many elements (``None``: any size).

    Inside ``torch.compile`` the context is not read (it cannot be traced) and ``"auto"``
    means the reference, whose ops Inductor fuses itself; under a ``torch.func``
    transform the fused backend is unavailable (a hand-written autograd node has no
    batching rule).  Ops therefore call this function and nothing else.

    Returns:
        The backend to run. ``"auto"`` never returns ``"triton"``.

    Raises:
        KernelUnavailableError: a backend was forced and cannot run here, with every reason.
        ValueError: on an unknown backend name.
    """
    if torch.compiler.is_compiling():
        # Traced by torch.compile: the backend context (a ContextVar) cannot be traced, and
        # Inductor fuses the reference's ops itself, so "auto" means the reference here.
        name = _check_name(backend or "reference")
    else:
        name = _check_name(backend)
    if name == "reference":
        return "reference"
    if name == "auto":
        if _fused_obstacles(tensors, fused, limits):
            return "reference"
        largest = max((t.numel() for t in tensors), default=0)
        return "fused" if fused_min_numel is None or largest >= fused_min_numel else "reference"
    reasons = (
        _fused_obstacles(tensors, fused, limits) if name == "fused" else _triton_obstacles(tensors, dtypes, limits)
    )
    if reasons:
        raise KernelUnavailableError(f"{op}: the {name} backend was forced but cannot run: " + "; ".join(reasons))
    return name
