"""``FusedStep``: one whole Adam step of a `VI` (draw, density, gradient, update) as one compiled call.

`vitorch.training.compile_step` compiles the forward and leaves the rest to torch's
runtime: the module call, AOTAutograd's wrappers, the autograd engine running the
compiled backward, and the optimizer's own dispatch.  On a model with a few hundred
unconstrained dimensions or fewer that runtime, not the arithmetic, is most of a step
(about 0.5-0.8 ms on one CPU thread, several times the arithmetic).  ``FusedStep``
removes it the way ``jax.jit(svi.update)`` does in NumPyro: the gradient is taken
functionally (``torch.func.grad_and_value`` over ``torch.func.functional_call``), so
the forward, the backward and Adam's update are traced into one graph with no autograd
at run time, and each call is one compiled function: guards, one generated kernel
module, the in-place parameter updates.

Two details keep that one call cheap and stable:

* the step count is a tensor, not a Python int, so no guard specializes on it
  (an int would recompile the step at every call);
* each ``FusedStep`` compiles its own copy of the step's code object: Dynamo caches
  compiled graphs per code object, with a limit of a few entries, so fitting many
  models in one process (a benchmark, simulation-based calibration) would otherwise
  exhaust one shared cache and fall back to slow recompilation.

The update is torch's Adam (no weight decay, no AMSGrad) to rounding; the particles'
noise is torch's generator (Inductor's ``fallback_random``), so under the same seed the
draws are those of the eager step.

References:
    Kingma & Ba, *Adam: A Method for Stochastic Optimization* (ICLR 2015).
    Ansel et al., *PyTorch 2: Faster Machine Learning Through Dynamic Python Bytecode
    Transformation and Graph Compilation* (ASPLOS 2024).
    Phan, Pradhan & Jankowiak, *Composable Effects for Flexible and Accelerated
    Probabilistic Programming in NumPyro* (2019): the jitted SVI update this mirrors.
"""

from __future__ import annotations

import types

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torch.func import functional_call, grad_and_value

__all__ = ["FusedStep"]


class FusedStep:
    """A compiled Adam step for a module whose ``forward(None)`` returns a `vitorch.LossOutput`.

    Built by `vitorch.model.VI.fused_step`.  ``step()`` draws the particles, evaluates
    the loss, differentiates it and updates every trainable parameter of ``module`` in
    place; it returns the loss, a 0-d tensor (read it with ``.item()`` only when needed:
    that waits for the step).

    Args:
        module: the module (its trainable parameters are updated in place).
        lr: Adam's learning rate (fixed: it is part of the compiled graph).
        betas: Adam's ``(beta1, beta2)``.
        eps: Adam's ``eps``.
        backend: ``torch.compile``'s backend (``"inductor"``; ``"aot_eager"`` or
            ``"eager"`` to debug without code generation).

    Attributes:
        params: ``{name: parameter}`` being trained.
        exp_avg, exp_avg_sq: Adam's moments, ``{name: tensor}`` shaped as the parameters.
        num_steps: ``[1]`` tensor, the steps taken.

    Raises:
        ValueError: if ``module`` has no trainable parameters, ``lr`` or ``eps`` is not
            positive, or a beta is outside ``[0, 1)``.

    References:
        Kingma & Ba, *Adam* (ICLR 2015), Algorithm 1.
    """

    def __init__(
        self,
        module: nn.Module,
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        backend: str = "inductor",
    ):
        if not isinstance(module, nn.Module):
            raise ValueError(f"FusedStep: module must be an nn.Module; got {type(module).__name__}")
        if not (isinstance(lr, (int, float)) and lr > 0):
            raise ValueError(f"FusedStep: lr must be a positive number; got {lr!r}")
        if not (isinstance(eps, (int, float)) and eps > 0):
            raise ValueError(f"FusedStep: eps must be a positive number; got {eps!r}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"FusedStep: betas must be two numbers in [0, 1); got {betas!r}")
        self.module = module
        self.params = {n: p for n, p in module.named_parameters() if p.requires_grad}
        if not self.params:
            raise ValueError("FusedStep: the module has no parameters with requires_grad=True")
        self.lr, self.betas, self.eps = float(lr), (float(betas[0]), float(betas[1])), float(eps)
        self.exp_avg = {n: torch.zeros_like(p) for n, p in self.params.items()}
        self.exp_avg_sq = {n: torch.zeros_like(p) for n, p in self.params.items()}
        first = next(iter(self.params.values()))
        # Shape [1], not 0-d: Dynamo (torch 2.13) drops in-place updates of a 0-d tensor attribute.
        self.num_steps = torch.zeros(1, dtype=first.dtype, device=first.device)
        options = {"fallback_random": True} if backend == "inductor" else None
        # A private code object per instance: Dynamo's cache (and its recompile limit) is per code object.
        code = FusedStep._step.__code__.replace()
        fn = types.FunctionType(code, FusedStep._step.__globals__, "_step", None, None)
        self._compiled = torch.compile(types.MethodType(fn, self), fullgraph=True, backend=backend, options=options)

    def _loss(self, params: dict[str, Tensor]) -> Tensor:
        return functional_call(self.module, params, (None,)).loss

    def _step(self) -> Tensor:
        with torch.no_grad():
            point = {n: p.detach() for n, p in self.params.items()}
        grads, value = grad_and_value(self._loss)(point)
        b1, b2 = self.betas
        with torch.no_grad():
            self.num_steps.add_(1)
            t = self.num_steps[0]
            correction1 = 1 - b1**t
            root_correction2 = (1 - b2**t).sqrt()
            for n, p in self.params.items():
                g, m, v = grads[n], self.exp_avg[n], self.exp_avg_sq[n]
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                # torch.optim.Adam's form: lr / c1 * m / (sqrt(v) / sqrt(c2) + eps)
                p.sub_(self.lr / correction1 * m / (v.sqrt() / root_correction2 + self.eps))
        return value.detach()

    def __call__(self) -> Tensor:
        """One step; returns the loss (0-d) at the parameters before the update."""
        # torch.distributions' argument checks are data-dependent branches that Dynamo cannot
        # always trace (and a compiled graph would not keep); the model checked its start point.
        old = Distribution._validate_args
        Distribution.set_default_validate_args(False)
        try:
            return self._compiled()
        finally:
            Distribution.set_default_validate_args(old)

    def __repr__(self) -> str:
        return f"FusedStep(lr={self.lr}, params={list(self.params)})"
