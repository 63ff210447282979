"""Nonlinear, non-Gaussian state-space models written as plain torch distributions.

A model is three user functions, each returning a ``torch.distributions`` object::

    init()                  -> law of x_1, event [D]
    transition(x_prev, t)   -> law of x_t given x_{t-1}; x_prev [..., T-1, D], t [T-1] (2..T)
    emission(x, t)          -> law of y_t given x_t;     x [..., T, D],        t [T]   (1..T)

Transitions and emissions are called once on the whole path (time is a batch
dimension of the returned distribution), so `StateSpaceModel.log_joint`
costs one vectorized call each, not a loop over time.  Any of the three may be an
``nn.Module``; their parameters then belong to the model and are learned jointly
with the guide: ``vt.fit(SSMVI(model, guide, ...), y)``.

The helpers below build the usual pieces: Gaussian transitions and emissions
(affine or through any function), Poisson counts with a log-rate and Bernoulli
outcomes with logits.

References:
    Krishnan, Shalit & Sontag, Structured Inference Networks for Nonlinear State
    Space Models (AAAI 2017).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Bernoulli, Distribution, Independent, Normal, Poisson

__all__ = [
    "StateSpaceModel",
    "GaussianTransition",
    "GaussianEmission",
    "PoissonEmission",
    "BernoulliEmission",
]


def _as_fn(f: Callable[[Tensor], Tensor] | Tensor) -> Callable[[Tensor], Tensor]:
    if isinstance(f, Tensor):
        matrix = f
        return lambda x: x @ matrix.mT
    return f


class _ScaleMixin(nn.Module):
    def _init_scale(self, scale: float | Tensor, learn_scale: bool) -> None:
        scale = torch.as_tensor(scale, dtype=torch.get_default_dtype())
        if not bool(((scale > 0) & torch.isfinite(scale)).all()):
            raise ValueError(f"{type(self).__name__}: scale must be positive and finite; got {scale}")
        log_scale = scale.log()
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> Tensor:
        return self.log_scale.exp()


class GaussianTransition(_ScaleMixin):
    """``x_t ~ N(f(x_{t-1}), diag(scale^2))``; ``f`` a function, module or ``[D, D]`` matrix.

    Args:
        mean: ``x_prev [..., D] -> [..., D]``, or a matrix ``F`` for ``F x_prev``.
        scale: ``[D]`` or scalar standard deviation(s).
        learn_scale: make ``log(scale)`` a learnable parameter.

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012).
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, mean: Callable[[Tensor], Tensor] | Tensor, scale: float | Tensor, learn_scale: bool = False):
        super().__init__()
        self.mean = mean if isinstance(mean, nn.Module) else None
        self._mean = _as_fn(mean)
        self._init_scale(scale, learn_scale)

    def forward(self, x_prev: Tensor, t: Tensor | None = None) -> Distribution:
        loc = self._mean(x_prev)
        return Independent(Normal(loc, self.scale.expand_as(loc), validate_args=False), 1)


class GaussianEmission(_ScaleMixin):
    """``y_t ~ N(g(x_t), diag(scale^2))``; ``g`` a function, module or ``[p, D]`` matrix.

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012).
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, mean: Callable[[Tensor], Tensor] | Tensor, scale: float | Tensor, learn_scale: bool = False):
        super().__init__()
        self.mean = mean if isinstance(mean, nn.Module) else None
        self._mean = _as_fn(mean)
        self._init_scale(scale, learn_scale)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Distribution:
        loc = self._mean(x)
        return Independent(Normal(loc, self.scale.expand_as(loc), validate_args=False), 1)


class PoissonEmission(nn.Module):
    """Counts ``y_t ~ Poisson(exp(g(x_t)))`` independently per coordinate; ``g`` gives log-rates.

    Shapes: ``x [..., T, D] -> Distribution`` with batch ``[..., T]`` and event ``[p]``.

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012).
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, log_rate: Callable[[Tensor], Tensor] | Tensor):
        super().__init__()
        self.log_rate = log_rate if isinstance(log_rate, nn.Module) else None
        self._log_rate = _as_fn(log_rate)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Distribution:
        # The rate is clamped only against overflow (exp(80) ~ 5e34), far beyond any count model.
        return Independent(Poisson(self._log_rate(x).clamp(max=80.0).exp(), validate_args=True), 1)


class BernoulliEmission(nn.Module):
    """Binary ``y_t ~ Bernoulli(sigmoid(g(x_t)))`` independently per coordinate; ``g`` gives logits.

    Shapes: ``x [..., T, D] -> Distribution`` with batch ``[..., T]`` and event ``[p]``.

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012).
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, logits: Callable[[Tensor], Tensor] | Tensor):
        super().__init__()
        self.logits = logits if isinstance(logits, nn.Module) else None
        self._logits = _as_fn(logits)

    def forward(self, x: Tensor, t: Tensor | None = None) -> Distribution:
        return Independent(Bernoulli(logits=self._logits(x), validate_args=True), 1)


class StateSpaceModel(nn.Module):
    """A Markov state-space model ``p(x_{1:T}, y_{1:T}) = p(x_1) prod p(x_t | x_{t-1}) prod p(y_t | x_t)``.

    Args:
        init: ``() -> Distribution`` over ``x_1`` (event ``[D]``).
        transition: ``(x_prev [..., T-1, D], t [T-1]) -> Distribution`` with batch ``[..., T-1]``.
        emission: ``(x [..., T, D], t [T]) -> Distribution`` with batch ``[..., T]``.

    Example:
        >>> model = StateSpaceModel(lambda: Independent(Normal(torch.zeros(1), 1.0), 1),
        ...                         GaussianTransition(torch.eye(1) * 0.9, 0.3),
        ...                         PoissonEmission(torch.eye(1)))
        >>> model.log_joint(x, y)                 # x [K, *B, T, D], y [*B, T, p] -> [K, *B]
        >>> vt.fit(SSMVI(model, StructuredInferenceNetwork(1, 1)), y, steps=1000)   # y [N, T, 1]

    References:
        Durbin & Koopman, *Time Series Analysis by State Space Methods* (2nd ed., OUP 2012).
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, init: Callable[[], Distribution], transition: Callable, emission: Callable):
        super().__init__()
        self.init, self.transition, self.emission = init, transition, emission

    def log_joint(self, x: Tensor, y: Tensor) -> Tensor:
        """``log p(x, y)`` for paths ``x [*S, *B, T, D]`` and data ``y [*B, T, p]`` -> ``[*S, *B]``.

        Raises:
            ValueError: if the time lengths differ or ``y`` is outside the emission's support.
        """
        if x.dim() < 2 or y.dim() < 2 or x.shape[-2] != y.shape[-2]:
            raise ValueError(
                f"StateSpaceModel.log_joint: x {tuple(x.shape)} and y {tuple(y.shape)} must share T at dim -2"
            )
        T = x.shape[-2]
        t = torch.arange(1, T + 1, device=x.device)
        out = self.init().log_prob(x[..., 0, :])
        if T > 1:
            out = out + self.transition(x[..., :-1, :], t[1:]).log_prob(x[..., 1:, :]).sum(-1)
        return out + self.emission(x, t).log_prob(y).sum(-1)

    @torch.no_grad()
    def sample(self, num_steps: int, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """Simulate ``(x [*S, T, D], y [*S, T, p])`` by ancestral sampling (one step at a time)."""
        x = self.init().sample(torch.Size(sample_shape))
        xs = [x]
        for step in range(2, num_steps + 1):
            x = self.transition(x.unsqueeze(-2), torch.tensor([step])).sample().squeeze(-2)
            xs.append(x)
        x = torch.stack(xs, -2)
        return x, self.emission(x, torch.arange(1, num_steps + 1)).sample()
