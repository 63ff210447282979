"""Autoregressive Gaussian paths: ``x_t = loc(x_{t-1}, c_t) + scale(x_{t-1}, c_t) eps_t``.

The family behind both amortized SSM posteriors.  A *step* network maps the
previous state and a per-step context (a backward RNN's state for the deep Markov
model; time, the next observation and the SDE parameters for Ryder et al.'s
bridge) to a Gaussian over the next state.  As a map from the noise ``eps_{1:T}``
to the path this is an affine autoregressive flow: drawing runs the steps in
order (``T`` network calls), while the density of a given path needs the steps
at all ``T`` previous states at once (one batched call), as in a masked
autoregressive flow (Papamakarios et al., 2017).

``detach()`` gives the same law at stopped parameters — the context is detached
and the step network is called through `torch.func.functional_call` with
detached weights — which is what STL and DReG evaluate.

References:
    Krishnan, Shalit & Sontag, Structured Inference Networks for Nonlinear State
    Space Models (AAAI 2017).
    Ryder, Golightly, McGough & Prangle, Black-Box Variational Inference for
    Stochastic Differential Equations (ICML 2018).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import constraints
from torch.func import functional_call

from ...families.base import Family

__all__ = ["AutoregressiveGaussianPath"]

_LOG_2PI = math.log(2 * math.pi)


class AutoregressiveGaussianPath(Family):
    """Gaussian autoregressive law over paths, event shape ``[T, D]``.

    Args:
        step: ``nn.Module`` with ``step(x_prev [..., D], context [..., C]) -> (loc [..., D], scale)``
            where ``scale`` is ``[..., D]`` (diagonal) or ``[..., D, D]`` (lower-triangular
            Cholesky factor with a positive diagonal).
        context: ``[*b, T, C]`` per-step context; its leading dims are the batch shape.
        x0: ``[D]`` (or broadcastable) state that precedes ``x_1``.
        frozen: evaluate ``step`` with detached parameters (set by `detach`).

    References:
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
        Ryder, Golightly, McGough & Prangle, *Black-Box Variational Inference for Stochastic
        Differential Equations* (ICML 2018).
    """

    arg_constraints = {}
    support = constraints.independent(constraints.real, 2)
    has_rsample = True

    def __init__(self, step: nn.Module, context: Tensor, x0: Tensor, frozen: bool = False):
        if context.dim() < 2:
            raise ValueError(f"AutoregressiveGaussianPath: context must be [*batch, T, C]; got {tuple(context.shape)}")
        self.step, self.context, self.x0, self.frozen = step, context, x0, frozen
        T, D = context.shape[-2], x0.shape[-1]
        super().__init__(context.shape[:-2], torch.Size((T, D)), validate_args=False)

    def detach(self) -> AutoregressiveGaussianPath:
        return AutoregressiveGaussianPath(self.step, self.context.detach(), self.x0.detach(), frozen=True)

    def expand(self, batch_shape, _instance=None):
        T, C = self.context.shape[-2:]
        return AutoregressiveGaussianPath(self.step, self.context.expand(*batch_shape, T, C), self.x0, self.frozen)

    def _call(self, x_prev: Tensor, ctx: Tensor) -> tuple[Tensor, Tensor]:
        if self.frozen:
            params = {k: v.detach() for k, v in self.step.named_parameters()}
            params.update(dict(self.step.named_buffers()))
            return functional_call(self.step, params, (x_prev, ctx))
        return self.step(x_prev, ctx)

    @staticmethod
    def _noise_log_density(eps: Tensor, scale: Tensor, D: int) -> Tensor:
        """``log N(x; loc, scale scale^T)`` at ``x = loc + scale eps``, summed over the last dims."""
        diag = scale if scale.dim() == eps.dim() else scale.diagonal(dim1=-2, dim2=-1)
        return -0.5 * eps.pow(2).sum(-1) - diag.log().sum(-1) - 0.5 * D * _LOG_2PI

    def rsample_and_log_prob(self, sample_shape=()) -> tuple[Tensor, Tensor]:
        sample_shape = torch.Size(sample_shape)
        T, D = self.event_shape
        ctx = self.context.expand(*sample_shape, *self.context.shape)
        shape = sample_shape + self.batch_shape
        eps = torch.randn(*shape, T, D, dtype=ctx.dtype, device=ctx.device)
        x = self.x0.expand(*shape, D)
        xs, log_q = [], 0.0
        for t in range(T):
            loc, scale = self._call(x, ctx[..., t, :])
            if scale.dim() == loc.dim():
                x = loc + scale * eps[..., t, :]
            else:
                x = loc + (scale @ eps[..., t, :].unsqueeze(-1)).squeeze(-1)
            log_q = log_q + self._noise_log_density(eps[..., t, :], scale, D)
            xs.append(x)
        return torch.stack(xs, -2), log_q

    def rsample(self, sample_shape=()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def log_prob(self, value: Tensor) -> Tensor:
        if not bool(torch.isfinite(value).all()):
            raise ValueError("AutoregressiveGaussianPath.log_prob: value must be finite (support: real paths)")
        T, D = self.event_shape
        x_prev = torch.cat([self.x0.expand(*value.shape[:-2], 1, D), value[..., :-1, :]], -2)
        loc, scale = self._call(x_prev, self.context.expand(*value.shape[:-2], T, self.context.shape[-1]))
        resid = value - loc
        if scale.dim() == loc.dim():
            eps = resid / scale
        else:
            eps = torch.linalg.solve_triangular(scale, resid.unsqueeze(-1), upper=False).squeeze(-1)
        return self._noise_log_density(eps, scale, D).sum(-1)
