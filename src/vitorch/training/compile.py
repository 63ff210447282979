"""The fused training step: a compiled forward-and-backward and a fused optimizer update.

``compile_step(model)`` returns a callable that runs one optimizer step on a batch:
zero the gradients, run the model's forward (``vt.loss`` included) through
``torch.compile``, back-propagate, update.  Two things make it faster than the same
step written eagerly:

* **One compiled graph per direction.**  Dynamo captures the whole forward (the
  encoder, the particles, the log-joint, the bound and the estimator's surrogate)
  with ``fullgraph=True`` by default, so a graph break is an error naming the line
  rather than a silent fall-back to eager; AOTAutograd derives the backward graph
  and Inductor fuses the elementwise work of both (activations, the likelihood,
  log-sum-exp, the reparameterization) into a few vectorized loops around the
  matrix products, which it leaves to the BLAS.
* **torch's own random numbers.**  With Inductor the step sets ``fallback_random=True``:
  the particles' noise comes from torch's generator (the same draws as eager under the
  same seed) instead of Inductor's per-element Philox loop, which on a CPU is not
  vectorized and can cost more than the fusion saves at many particles.
* **Mixed precision, if asked.**  ``autocast_dtype=torch.bfloat16`` runs the forward
  under ``torch.autocast``: the matrix products (and their backward) in bfloat16 with
  float32 accumulation, while every density, the particles, the bound and the
  optimizer stay float32 (the library's heads, flows and likelihoods promote network
  outputs back to float32 before forming a density: `vitorch.full_precision`).
  It pays where the hardware has native bfloat16 (see ``docs/performance.md``); it
  changes the arithmetic, so it is off by default, and on a CPU without native
  bfloat16 it is slower, not faster.
* **One fused optimizer kernel.**  Without an ``optimizer``, Adam is built with
  ``fused=True`` (one multi-tensor kernel for the whole update instead of a dozen
  elementwise passes per parameter), on every device where torch has one.

What it cannot do: the matrix products of a dense network cost the same compiled or
not, so the speed-up is bounded by the share of the step that is *not* a matrix
product (measured speed-ups are in ``docs/performance.md``).  The fused-torch backends
of `vitorch.kernels` step aside inside the compiled graph: each op traces its
reference, whose elementwise work Inductor fuses itself.  Compiling takes seconds to a
minute, once per input shape.

Example:
    >>> model = vae.VAE.mlp(784)
    >>> step = compile_step(model, lr=1e-3)
    >>> for x in batches:            # x [B, 784]
    ...     out = step(x)            # LossOutput: out.loss scalar, out.bound [B]

References:
    Ansel et al., *PyTorch 2: Faster Machine Learning Through Dynamic Python
    Bytecode Transformation and Graph Compilation* (ASPLOS 2024): Dynamo,
    AOTAutograd and Inductor.
    Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

__all__ = ["compile_step", "fused_adam", "CompiledStep"]

# Devices whose tensors torch's fused Adam kernel accepts (torch >= 2.4 has a CPU kernel).
_FUSED_DEVICES = ("cpu", "cuda", "mps", "xpu")


def fused_adam(params: Iterable[Tensor], lr: float = 1e-3, **kwargs: object) -> torch.optim.Adam:
    """``torch.optim.Adam`` with ``fused=True`` where torch has a fused kernel for the parameters.

    Args:
        params: the parameters (each any shape, floating point).
        lr: the learning rate.
        **kwargs: other ``torch.optim.Adam`` options (``betas``, ``eps``, ``weight_decay``...).

    Returns:
        The optimizer; it falls back to torch's default implementation when a
        parameter is not floating point or lives on a device without a fused kernel.

    Raises:
        ValueError: if ``params`` is empty.

    References:
        Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015).
    """
    params = list(params)
    if not params:
        raise ValueError("fused_adam: params is empty (the model has no trainable parameters)")
    tensors = [p for group in params for p in (group["params"] if isinstance(group, dict) else [group])]
    fusable = all(p.is_floating_point() and p.device.type in _FUSED_DEVICES for p in tensors)
    return torch.optim.Adam(params, lr=lr, fused=fusable or None, **kwargs)


class CompiledStep:
    """One training step with a compiled forward-and-backward: ``step(batch) -> model(batch)``.

    Built by `compile_step`.  ``model`` keeps its own (uncompiled) state-dict names,
    so checkpoints and evaluation use it as usual.

    Attributes:
        model: the module being trained.
        optimizer: the optimizer that ``__call__`` steps.
        forward: the compiled forward (``torch.compile(model, ...)``).

    References:
        Ansel et al., *PyTorch 2* (ASPLOS 2024).
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, forward):
        self.model = model
        self.optimizer = optimizer
        self.forward = forward

    def __call__(self, batch):
        """Zero the gradients, run the compiled forward on ``batch``, back-propagate, update.

        A bare step, with no host synchronization: unlike `vitorch.fit` it does not
        check the loss, gradients, bound or parameters for NaN/inf (check ``out.loss``
        yourself every few steps, or train with ``fit(..., compile=True)``).

        Args:
            batch: what ``model`` takes, e.g. ``x [B, *event]``.

        Returns:
            What ``model(batch)`` returned: a `vitorch.LossOutput` (``loss``
            scalar, ``bound [B]``, ``log_w [K, B]``) or a scalar loss tensor.
        """
        self.optimizer.zero_grad(set_to_none=True)
        out = self.forward(batch)
        (out if isinstance(out, Tensor) else out.loss).backward()
        self.optimizer.step()
        return out


def compile_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    *,
    lr: float = 1e-3,
    fullgraph: bool = True,
    autocast_dtype: torch.dtype | None = None,
    options: Mapping | None = None,
) -> CompiledStep:
    """A fused training step for ``model``, whose forward returns ``vt.loss``'s output or a scalar loss.

    Args:
        model: an ``nn.Module``; ``model(batch).loss`` (or ``model(batch)``) is the
            scalar to minimize.
        optimizer: the optimizer to step; ``None`` builds `fused_adam` over the
            trainable parameters with ``lr``.  A given one is used as it is (build it
            with ``fused=True`` for the fused update).
        lr: the learning rate of the default optimizer (ignored with ``optimizer``).
        fullgraph: compile the forward as one graph and raise on a graph break
            (Dynamo's error names the line), instead of running the rest eagerly.
        autocast_dtype: ``torch.bfloat16`` or ``torch.float16`` runs the forward (and so
            the backward's matrix products) under ``torch.autocast`` on the parameters'
            device; parameters, gradients, optimizer state, densities and the loss stay
            float32.  ``None`` (default): float32 throughout.
        options: more ``torch.compile`` keywords (``mode``, ``dynamic``, ``backend``,
            ``options``...).  With Inductor and no ``mode``, Inductor's
            ``fallback_random`` is switched on unless ``options["options"]`` says otherwise.

    Returns:
        A `CompiledStep`; ``step(x)`` trains on ``x [B, *event]`` and returns the
        model's output.  The first call (and the first with a new batch shape)
        compiles.

    Raises:
        ValueError: if ``model`` is not an ``nn.Module``, has no trainable parameters,
            ``lr`` is not positive, ``autocast_dtype`` is not bfloat16/float16, or
            ``options`` repeats ``fullgraph``.

    References:
        Ansel et al., *PyTorch 2* (ASPLOS 2024); Kingma & Ba, *Adam* (ICLR 2015).
    """
    if not isinstance(model, nn.Module):
        raise ValueError(f"compile_step: model must be an nn.Module; got {type(model).__name__}")
    options = dict(options or {})
    if "fullgraph" in options:
        raise ValueError("compile_step: pass fullgraph as its own argument, not inside options")
    if optimizer is None:
        if not lr > 0:
            raise ValueError(f"compile_step: lr must be positive; got {lr!r}")
        params = [p for p in model.parameters() if p.requires_grad]
        if not params:
            raise ValueError("compile_step: model has no parameters with requires_grad=True")
        optimizer = fused_adam(params, lr)
    elif not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(f"compile_step: optimizer must be a torch.optim.Optimizer; got {type(optimizer).__name__}")
    if options.get("backend", "inductor") == "inductor" and "mode" not in options:
        # torch.compile takes either a mode or Inductor options; with a mode, the caller chose.
        options["options"] = {"fallback_random": True, **dict(options.get("options") or {})}
    forward = model
    if autocast_dtype is not None:
        if autocast_dtype not in (torch.bfloat16, torch.float16):
            raise ValueError(
                f"compile_step: autocast_dtype must be torch.bfloat16 or torch.float16; got {autocast_dtype!r}"
            )
        forward = Autocast(model, autocast_dtype)
    return CompiledStep(model, optimizer, torch.compile(forward, fullgraph=fullgraph, **options))


class Autocast(nn.Module):
    """``model(batch)`` run under ``torch.autocast(device, dtype)``: mixed precision for a training forward.

    A module rather than a closure, so Dynamo guards it like the model it wraps.

    Args:
        model: the module to run (its parameters stay in their own dtype).
        dtype: ``torch.bfloat16`` or ``torch.float16``.
        device: the autocast device; default that of the model's first parameter (CPU
            for a model without parameters).

    References:
        Micikevicius et al., *Mixed Precision Training* (ICLR 2018).
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype, device: str | torch.device | None = None):
        super().__init__()
        self.model = model
        self.dtype = dtype
        if device is None:
            first = next(model.parameters(), None)
            device = "cpu" if first is None else first.device
        self.device_type = torch.device(device).type

    def forward(self, batch):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(batch)
