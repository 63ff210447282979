"""Decoder likelihoods ``p(x | z)``: a decoder emits parameters, a likelihood scores data.

Each likelihood says how many decoder outputs it needs per data entry
(`Likelihood.params_per_entry`) and maps decoder outputs ``[K, B, *event, P]``
(``P`` dropped when it is 1) and data ``x [B, *event]`` to ``log p(x | z)`` of shape
``[K, B]``, summing over the event dimensions.  They are written with fused
torch functions and no argument checks, because they run in every training step.

References:
    Kingma & Welling, Auto-Encoding Variational Bayes (2014), appendix C
    (Bernoulli and Gaussian decoders).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Likelihood", "Bernoulli", "Gaussian", "Categorical", "Poisson"]

_LOG_2PI = math.log(2 * math.pi)


def _sum_event(t: Tensor, event_dims: int) -> Tensor:
    return t.sum(tuple(range(-event_dims, 0))) if event_dims else t


class Likelihood(nn.Module):
    """Base class: ``log_prob(params, x) -> [K, B]``, ``mean(params)`` and ``sample(params)``.

    Decoder outputs ``params`` are ``[K, B, *event(, P)]`` (``P =`` `params_per_entry`,
    dropped when it is 1) for data ``x [B, *event]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.
    """

    params_per_entry = 1

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        """``log p(x | z)`` summed over the event: params ``[K, B, *event(, P)]``, x ``[B, *event]`` -> ``[K, B]``."""
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        """``E[x | z]`` of shape ``[..., *event]`` (what reconstruction grids show)."""
        raise NotImplementedError

    def sample(self, params: Tensor) -> Tensor:
        """A draw ``x ~ p(x | z)`` of shape ``[..., *event]``."""
        raise NotImplementedError


class Bernoulli(Likelihood):
    """Binary data, decoder outputs are logits: ``log p = x l - softplus(l)``.

    Shapes: logits ``[K, B, *event]`` and ``x [B, *event]`` (entries 0 or 1) give
    ``log_prob`` of shape ``[K, B]``; ``mean`` and ``sample`` keep the logits' shape.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.1
        (the Bernoulli MLP decoder).
    """

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        # One fused kernel (and its fused backward) for x*l - softplus(l).
        nll = F.binary_cross_entropy_with_logits(params, x.expand_as(params), reduction="none")
        return -_sum_event(nll, x.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        return torch.sigmoid(params)

    def sample(self, params: Tensor) -> Tensor:
        return torch.bernoulli(torch.sigmoid(params))


class Gaussian(Likelihood):
    """Real data with a diagonal Gaussian ``N(x; mu(z), sigma^2)``.

    Args:
        scale: a fixed ``sigma`` (``> 0``); ``None`` learns it.
        learned: where a learned ``sigma`` lives: ``"shared"``, one free parameter per
            data entry (``event_shape`` needed), or ``"decoder"``, a second decoder
            output per entry (heteroscedastic).
        event_shape: the data's event shape, for ``learned="shared"``.
        min_scale: floor added to a learned ``softplus`` scale, which keeps the
            likelihood bounded on data with constant entries.

    Shapes: ``params [K, B, *event]`` (``[K, B, *event, 2]`` with ``learned="decoder"``)
    and ``x [B, *event]`` give ``log_prob`` of shape ``[K, B]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014), appendix C.2
        (the Gaussian MLP decoder).
    """

    def __init__(
        self,
        scale: float | None = None,
        learned: str = "shared",
        event_shape: tuple[int, ...] | None = None,
        min_scale: float = 1e-3,
    ):
        super().__init__()
        if scale is not None and not (0 < scale < math.inf):
            raise ValueError(f"Gaussian: scale must be positive and finite; got {scale!r}")
        if learned not in ("shared", "decoder"):
            raise ValueError(f"Gaussian: learned must be 'shared' or 'decoder'; got {learned!r}")
        if not min_scale >= 0:
            raise ValueError(f"Gaussian: min_scale must be >= 0; got {min_scale!r}")
        self.fixed = scale
        self.learned = None if scale is not None else learned
        self.min_scale = min_scale
        self.raw_scale = None
        if self.learned == "shared":
            if event_shape is None:
                raise ValueError("Gaussian: a shared learned scale needs event_shape (the shape of one datum)")
            # softplus(0.5413) = 1: start at unit scale.
            self.raw_scale = nn.Parameter(torch.full(tuple(event_shape), 0.5413))
        self.params_per_entry = 2 if self.learned == "decoder" else 1

    def _loc_scale(self, params: Tensor) -> tuple[Tensor, Tensor | float]:
        if self.learned == "decoder":
            loc, raw = params.unbind(-1)
            return loc, F.softplus(raw) + self.min_scale
        if self.learned == "shared":
            return params, F.softplus(self.raw_scale) + self.min_scale
        return params, self.fixed

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        loc, scale = self._loc_scale(params)
        if isinstance(scale, float):
            lp = -0.5 * ((x - loc) / scale).pow(2) - (math.log(scale) + 0.5 * _LOG_2PI)
        else:
            lp = -0.5 * ((x - loc) / scale).pow(2) - scale.log() - 0.5 * _LOG_2PI
        return _sum_event(lp, x.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        return self._loc_scale(params)[0]

    def sample(self, params: Tensor) -> Tensor:
        loc, scale = self._loc_scale(params)
        return loc + scale * torch.randn_like(loc)


class Categorical(Likelihood):
    """Discrete data with ``C`` levels per entry (e.g. quantized pixels); ``C`` logits per entry.

    ``x`` holds level indices ``0 .. C-1`` (any dtype; they are rounded to integers).
    Shapes: logits ``[K, B, *event, C]`` and ``x [B, *event]`` give ``log_prob`` ``[K, B]``;
    ``mean`` and ``sample`` return ``[K, B, *event]``.

    Args:
        num_classes: ``C``, the number of levels (``>= 2``).

    References:
        van den Oord, Kalchbrenner & Kavukcuoglu, *Pixel Recurrent Neural Networks*
        (2016) (pixels as 256-way categorical variables).
    """

    def __init__(self, num_classes: int):
        super().__init__()
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
            raise ValueError(f"Categorical: num_classes must be an integer >= 2; got {num_classes!r}")
        self.params_per_entry = num_classes

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        log_p = params.log_softmax(-1)
        index = x.long().expand(params.shape[:-1]).unsqueeze(-1)
        return _sum_event(log_p.gather(-1, index).squeeze(-1), x.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        levels = torch.arange(params.shape[-1], dtype=params.dtype, device=params.device)
        return params.softmax(-1) @ levels

    def sample(self, params: Tensor) -> Tensor:
        flat = params.reshape(-1, params.shape[-1]).softmax(-1)
        return torch.multinomial(flat, 1).reshape(params.shape[:-1]).to(params.dtype)


class Poisson(Likelihood):
    """Count data; decoder outputs ``log rate``: ``log p = x log r - r - log x!``.

    Shapes: log-rates ``[K, B, *event]`` and counts ``x [B, *event]`` give ``log_prob``
    of shape ``[K, B]``; ``mean`` and ``sample`` keep the log-rates' shape.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (2014) (any decoder
        likelihood with a tractable density); Gopalan, Hofman & Blei, *Scalable
        Recommendation with Hierarchical Poisson Factorization* (2015) (Poisson counts).
    """

    def log_prob(self, params: Tensor, x: Tensor) -> Tensor:
        lp = x * params - params.exp() - torch.lgamma(x + 1.0)
        return _sum_event(lp, x.dim() - 1)

    def mean(self, params: Tensor) -> Tensor:
        return params.exp()

    def sample(self, params: Tensor) -> Tensor:
        return torch.poisson(params.exp())
