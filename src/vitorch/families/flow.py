"""Normalizing-flow family: a base distribution pushed through a stack of transforms.

``z = T_L(... T_1(x))``, ``x ~ base``, each transform an ``nn.Module`` from
`vitorch.flows` returning its output and ``log|det J|`` together, so

* `Flow.rsample_and_log_prob` is one forward pass:
  ``log q(z) = log base(x) - sum_l ladj_l``;
* `Flow.log_prob` runs the inverses from ``z`` back to ``x`` (cheap for MAF,
  coupling, LU and elementwise layers; ``D`` sequential steps for IAF; a scalar Newton solve
  per layer for planar and Sylvester);
* `Flow.detach` is the same flow with the base's parameters, the context and
  every transform's parameters stopped (through `torch.func.functional_call`),
  which is what sticking-the-landing and DReG evaluate on the flow's own samples.

The flow is a cheap value: the modules own the parameters, and an amortized
posterior is a module that returns a new ``Flow`` per context
(`ConditionalFlow`, defined here beside `Flow`; also importable as
``vitorch.flows.ConditionalFlow``).

References:
    Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015).
    Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints
from torch.func import functional_call

from .base import Family, stopped
from .constraints import Vector, finite_support
from .gaussian import DiagNormal
from .transform import Transform

__all__ = ["Flow", "ConditionalFlow"]


class _Method(nn.Module):
    """Calls one method of a wrapped transform, so ``functional_call`` can swap its parameters."""

    def __init__(self, transform: Transform, method: str):
        super().__init__()
        self.t = transform
        self.method = method

    def forward(self, v, context, **kwargs):
        return getattr(self.t, self.method)(v, context, **kwargs)


def _stopped_call(transform: Transform, method: str, v: Tensor, context: Tensor | None, **kwargs):
    """``transform.<method>(v, context)`` with every parameter detached."""
    state = {f"t.{k}": p.detach() for k, p in transform.named_parameters()}
    return functional_call(_Method(transform, method), state, (v, context), kwargs)


class Flow(Family):
    """A base distribution with event shape ``[D]`` pushed through invertible transforms.

    Args:
        base: a distribution with event shape ``[D]`` and ``rsample`` (e.g.
            ``vt.DiagNormal(torch.zeros(D), torch.ones(D))``).
        transforms: `vitorch.flows.Transform` modules, applied in order from
            the base sample to ``z``.
        context: ``[*batch, C]`` features read by conditional transforms; its batch
            dimensions broadcast with the base's.
        validate_args: check ``log_prob`` inputs against the support.

    Shapes: ``rsample_and_log_prob((K,))`` gives ``z [K, *batch, D]`` and
    ``log_q [K, *batch]``; ``log_prob(z [*sample, *batch, D]) -> [*sample, *batch]``.

    Example:
        >>> D = 2
        >>> q = Flow(vt.DiagNormal(torch.zeros(D), torch.ones(D)), [vt.flows.Planar(D) for _ in range(8)])
        >>> z, log_q = q.rsample_and_log_prob((16,))   # [16, 2], [16]

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015);
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(
        self,
        base: Distribution,
        transforms: Sequence[Transform],
        context: Tensor | None = None,
        validate_args: bool | None = None,
        _stop: bool = False,
    ):
        if not isinstance(base, Distribution) or len(base.event_shape) != 1:
            shape = getattr(base, "event_shape", None)
            raise ValueError(
                f"Flow: base must be a Distribution with event shape [D]; got {type(base).__name__} {shape}"
            )
        if not getattr(base, "has_rsample", False):
            raise ValueError(f"Flow: base {type(base).__name__} has no rsample, so the flow could not reparameterize")
        transforms = list(transforms)
        d = base.event_shape[0]
        for i, t in enumerate(transforms):
            if not isinstance(t, Transform):
                raise ValueError(f"Flow: transforms[{i}] must be a vitorch.flows.Transform; got {type(t).__name__}")
            if t.dim != d:
                raise ValueError(f"Flow: transforms[{i}] ({type(t).__name__}) has dim {t.dim} but the base has D={d}")
        for i, (a, b) in enumerate(zip(transforms, transforms[1:])):
            if a.codomain is not b.domain and b.domain is not constraints.real:
                raise ValueError(f"Flow: transforms[{i + 1}] expects {b.domain} but transforms[{i}] gives {a.codomain}")
        batch_shape = base.batch_shape
        if context is not None:
            try:
                batch_shape = torch.broadcast_shapes(batch_shape, context.shape[:-1])
            except RuntimeError:
                raise ValueError(
                    f"Flow: context {tuple(context.shape)} does not broadcast with the base's batch shape "
                    f"{tuple(base.batch_shape)}"
                ) from None
        if d == 0:
            raise ValueError(
                "Flow: the base has an event of size 0 (event shape (0,)); a family needs at least one coordinate"
            )
        self.base = base
        self.transforms = transforms
        self.context = context
        self._stop = _stop
        # Inputs of the iterative-inverse layers from the last forward pass, shared with
        # detach(): log_prob on the flow's own samples (STL, DReG) starts its Newton
        # solves there.  Only a starting point, so a stale entry costs time, never accuracy.
        self._hints: dict = {}
        super().__init__(batch_shape, base.event_shape, validate_args=validate_args)

    @property
    def support(self):
        # Finite values only, as every family's support (see .constraints).
        codomain = self.transforms[-1].codomain if self.transforms else constraints.real
        return Vector(finite_support(codomain))

    def _call(self, t: Transform, method: str, v: Tensor, **kwargs):
        if self._stop:
            return _stopped_call(t, method, v, self.context, **kwargs)
        return getattr(t, method)(v, self.context, **kwargs)

    def _base(self) -> Distribution:
        return self.base if self.base.batch_shape == self.batch_shape else self.base.expand(self.batch_shape)

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        base = self._base()
        if hasattr(base, "rsample_and_log_prob"):
            z, log_q = base.rsample_and_log_prob(torch.Size(sample_shape))
        else:
            z = base.rsample(torch.Size(sample_shape))
            log_q = base.log_prob(z)
        hints = {}
        for i, t in enumerate(self.transforms):
            if t.accepts_hint:
                hints[i] = z.detach()
            z, ladj = self._call(t, "call_and_ladj", z)
            log_q = log_q - ladj
        self._hints.clear()
        self._hints.update(hints)
        return z, log_q

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        """``log q(z)`` through the inverses; raises `vitorch.flows.NoInverseError` if one is missing."""
        if self._validate_args:
            self._validate_sample(value)
        try:
            torch.broadcast_shapes(value.shape[:-1], self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"Flow.log_prob: value {tuple(value.shape)} does not broadcast with batch shape "
                f"{tuple(self.batch_shape)} and event shape {tuple(self.event_shape)}"
            ) from None
        x, log_det = value, 0.0
        for i in reversed(range(len(self.transforms))):
            t = self.transforms[i]
            if t.accepts_hint:
                hint = self._hints.get(i)
                hint = hint if hint is not None and hint.shape == x.shape else None
                x, ladj = self._call(t, "inverse_and_ladj", x, hint=hint)
            else:
                x, ladj = self._call(t, "inverse_and_ladj", x)
            log_det = log_det + ladj
        return self._base().log_prob(x) + log_det

    def detach(self) -> Flow:
        ctx = None if self.context is None else self.context.detach()
        new = Flow(stopped(self.base), self.transforms, ctx, validate_args=False, _stop=True)
        new._validate_args = self._validate_args
        new._hints = self._hints
        return new

    def expand(self, batch_shape, _instance=None) -> Flow:
        batch_shape = torch.Size(batch_shape)
        try:
            ok = torch.broadcast_shapes(self.batch_shape, batch_shape) == batch_shape
        except RuntimeError:
            ok = False
        if not ok:
            raise ValueError(
                f"Flow.expand: batch shape {tuple(self.batch_shape)} cannot expand to {tuple(batch_shape)}"
            )
        ctx = None if self.context is None else self.context.expand(*batch_shape, self.context.shape[-1])
        new = Flow(self.base.expand(batch_shape), self.transforms, ctx, validate_args=False, _stop=self._stop)
        new._validate_args = self._validate_args
        return new

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms)
        return f"Flow(base={type(self.base).__name__}, transforms=[{names}], batch_shape={tuple(self.batch_shape)})"


class ConditionalFlow(nn.Module):
    """The module that owns a flow's parameters and returns the family: ``module(context) -> Flow``.

    Following zuko, parameters live in modules and distributions are cheap values that a
    module *returns*.  For an amortized posterior the encoder emits features ``[B, C]`` and
    ``ConditionalFlow(...)(features)`` is a flow with batch shape ``[B]``; without a context
    (``context_features = 0`` in every transform) the same module gives an unconditional
    flow, ``module()``.  The base is a standard normal.

    Args:
        transforms: `vitorch.flows.Transform` modules, base side first.
            Put an `vitorch.flows.ElementwiseAffine` first for a learned
            Gaussian starting point.
        dim: event size ``D`` (default: the first transform's).

    Example:
        >>> D, C = 2, 16
        >>> flow = ConditionalFlow([IAF(D, context_features=C), IAF(D, context_features=C, order=[1, 0])])
        >>> q = flow(features)                              # features [B, C] -> Flow, batch [B]

    References:
        Rezende & Mohamed, Variational Inference with Normalizing Flows (ICML 2015);
        Kingma et al., Improved Variational Inference with Inverse Autoregressive Flow
        (NeurIPS 2016), sec. 4 (amortized flows).
    """

    def __init__(self, transforms: Sequence[Transform], dim: int | None = None):
        super().__init__()
        transforms = list(transforms)
        if dim is None:
            if not transforms:
                raise ValueError("ConditionalFlow: give dim when there are no transforms")
            dim = transforms[0].dim
        self.dim = dim
        self.transforms = nn.ModuleList(transforms)
        # Buffers, so the base follows .to(dtype / device) with the transforms.
        self.register_buffer("base_loc", torch.zeros(dim), persistent=False)
        self.register_buffer("base_scale", torch.ones(dim), persistent=False)

    def forward(self, context: Tensor | None = None) -> Flow:
        """``context [*batch, C]`` (or ``None``) -> `Flow` with batch shape ``[*batch]``."""
        base = DiagNormal(self.base_loc, self.base_scale, validate_args=False)
        return Flow(base, list(self.transforms), context)
