"""The parametrization the Concrete families share, and the straight-through op.

Every Concrete family (`vitorch.families.concrete`) takes a temperature ``lambda``
(``[*batch]``, positive) and one of ``probs`` / ``logits`` (``[*batch, K]`` for the
categorical relaxations, ``[*batch]`` for the Bernoulli ones), as
``torch.distributions.RelaxedOneHotCategorical`` does.  `_Relaxed` checks and broadcasts
them, keeps the given tensor (so that loading a checkpoint into it changes the family)
and converts it to logits on use; the Bernoulli families override the hooks that differ.
`_StraightThrough` is ``hard + (relaxed - stop(relaxed))`` as one autograd op: the value
of the hard sample with the gradient of the relaxed one.

References:
    Maddison, Mnih & Teh, The Concrete Distribution: A Continuous Relaxation of Discrete Random
    Variables (ICLR 2017).
    Bengio, Leonard & Courville, Estimating or Propagating Gradients Through Stochastic Neurons
    (arXiv:1308.3432, 2013): the straight-through estimator.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Family, as_params, check_param
from .constraints import finite_real, positive_finite, simplex


def _one_of(family: str, probs, logits) -> tuple[str, Tensor]:
    if (probs is None) == (logits is None):
        raise ValueError(f"{family}: give exactly one of probs and logits")
    return ("probs", probs) if probs is not None else ("logits", logits)


class _Relaxed(Family):
    """Temperature and class parameters shared by the four families (``event_dims`` 1 or 0)."""

    has_rsample = True
    event_dims = 1
    # probs is converted to logits; each is checked by its own constraint where given.
    arg_constraints = {"temperature": positive_finite}

    def __init__(self, temperature, probs=None, logits=None, validate_args: bool | None = None):
        name = type(self).__name__
        which, value = _one_of(name, probs, logits)
        temperature, value = as_params(name, temperature=temperature, **{which: value})
        if value.dim() < self.event_dims:
            raise ValueError(f"{name}: {which} must be [*batch, K] (at least 1-D); got shape {tuple(value.shape)}")
        batch_of_value = value.shape[: value.dim() - self.event_dims]
        try:
            batch = torch.broadcast_shapes(batch_of_value, temperature.shape)
        except RuntimeError:
            raise ValueError(
                f"{name}: temperature {tuple(temperature.shape)} does not broadcast with the batch shape "
                f"{tuple(batch_of_value)} of {which} {tuple(value.shape)}"
            ) from None
        validate = torch.distributions.Distribution._validate_args if validate_args is None else validate_args
        if validate:
            check_param(
                "temperature", temperature, "PositiveFinite(x > 0 and finite)", positive_finite.check(temperature), name
            )
            if which == "probs":
                ok = self._probs_ok(value)
                check_param("probs", value, self._probs_constraint, ok, name)
            else:
                check_param("logits", value, "FiniteReal()", finite_real.check(value), name)
        self.temperature = temperature
        # Kept as given and converted on use, so that loading new values into the given
        # tensors (a checkpoint) changes the family.
        self._which, self._param = which, value
        event = value.shape[value.dim() - self.event_dims :]
        super()._init_checked(batch, event, False)
        self._validate_args = bool(validate)

    # ---- parametrization hooks (categorical by default) -----------------------------------
    _probs_constraint = "Simplex()"

    @staticmethod
    def _probs_ok(p: Tensor) -> Tensor:
        return simplex.check(p) & torch.isfinite(p).all(-1)

    @staticmethod
    def _normalized_logits(logits: Tensor) -> Tensor:
        return logits - logits.logsumexp(-1, keepdim=True)

    @staticmethod
    def _probs_to_logits(p: Tensor) -> Tensor:
        # A zero probability would give logit -inf and NaN densities; torch clamps the same way.
        return p.clamp_min(torch.finfo(p.dtype).tiny).log()

    @property
    def logits(self) -> Tensor:
        """``[*batch, K]`` normalized log-probabilities (log-odds ``[*batch]`` for a Bernoulli)."""
        if self._which == "logits":
            return self._normalized_logits(self._param)
        return self._probs_to_logits(self._param)

    def _raw_logits(self) -> Tensor:
        # Unnormalized: the Gumbel-softmax draw and the Concrete density ignore an additive constant.
        return self._param if self._which == "logits" else self._probs_to_logits(self._param)

    @property
    def probs(self) -> Tensor:
        return self.logits.softmax(-1)

    def _temp(self) -> Tensor:
        return self.temperature.unsqueeze(-1) if self.event_dims else self.temperature

    # ---- torch plumbing ---------------------------------------------------------------------
    def _rebuild(self, temperature: Tensor, param: Tensor):
        new = type(self)(temperature, **{self._which: param}, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def detach(self):
        return self._rebuild(self.temperature.detach(), self._param.detach())

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        temperature = self.temperature.expand(batch_shape)
        return self._rebuild(temperature, self._param.expand(batch_shape + self.event_shape))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"


class _StraightThrough(torch.autograd.Function):
    """Value ``hard``, gradient that of ``relaxed``: ``hard + (relaxed - stop(relaxed))`` in one op."""

    @staticmethod
    def forward(relaxed: Tensor, hard: Tensor) -> Tensor:
        return hard

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _HardMoments:
    """Moments of a straight-through family: its values are exactly one-hot (0/1) with probabilities
    ``probs``, so each coordinate is Bernoulli(``probs``): mean ``probs``, variance ``probs (1 - probs)``,
    ``[*batch, K]`` (``[*batch]`` for a Bernoulli)."""

    @property
    def mean(self) -> Tensor:
        return self.probs

    @property
    def variance(self) -> Tensor:
        p = self.probs
        return p * (1 - p)
