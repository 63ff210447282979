"""`NPEPosterior`: the amortized posterior at given data, as a torch distribution.

``npe.posterior(x_o)`` evaluates the embedding of ``x_o`` once and returns a
distribution over ``theta`` with the prior's support, ``sample`` / ``rsample`` /
``log_prob`` / ``rsample_and_log_prob``, so it plugs in wherever torch expects one:
as the proposal of the next round of sequential NPE (`vitorch.sbi.simulate` draws
from it), in `vitorch.sbi.sbc_ranks`, or as a variational family.

References:
    Papamakarios & Murray, *Fast epsilon-free inference of simulation models with Bayesian
    conditional density estimation* (NeurIPS 2016).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["NPEPosterior"]


class NPEPosterior(Distribution):
    """``q(theta | x)`` of a trained `vitorch.sbi.NPE` at fixed ``x [*batch, *x_shape]``.

    Shapes: batch shape ``[*batch]``, event shape ``[D]``;
    ``sample((n,)) -> [n, *batch, D]``; ``log_prob(theta [*, *batch, D]) -> [*, *batch]``.
    The support is the prior's, and every sample lies in it.

    Args:
        npe: the trained `vitorch.sbi.NPE`.
        x: the observed data ``[*batch, *x_shape]`` (gradients flow to it through
            ``log_prob`` and ``rsample``, e.g. for sensitivity analysis).
        validate_args: check ``log_prob``'s argument against the support.

    References:
        Papamakarios & Murray, *Fast epsilon-free inference of simulation models with
        Bayesian conditional density estimation* (NeurIPS 2016).
    """

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, npe, x: Tensor, validate_args: bool | None = None):
        if not isinstance(x, Tensor):
            raise TypeError(f"NPEPosterior: x must be a tensor; got {type(x).__name__}")
        n = len(npe.x_shape)
        if x.dim() < n or tuple(x.shape[x.dim() - n :]) != tuple(npe.x_shape):
            raise ValueError(
                f"NPEPosterior: x must have shape [*batch, {', '.join(map(str, npe.x_shape))}]; got {tuple(x.shape)}"
            )
        if not bool(torch.isfinite(x).all()):
            raise ValueError("NPEPosterior: x must be finite")
        self.npe = npe
        self.x = x
        self._context = npe.context(x)
        super().__init__(x.shape[: x.dim() - n], torch.Size([npe.dim]), validate_args=validate_args)

    @property
    def support(self):
        return self.npe.prior.support

    def rsample_and_log_prob(self, sample_shape: torch.Size | tuple = ()) -> tuple[Tensor, Tensor]:
        """``theta [*sample, *batch, D]`` and ``log q(theta | x) [*sample, *batch]`` in one pass."""
        return self.npe.sample_and_log_prob_given(self._context, sample_shape)

    def rsample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        return self.rsample_and_log_prob(sample_shape)[0]

    def sample(self, sample_shape: torch.Size | tuple = ()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return self.npe.log_prob_given(value, self._context)

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)
        return NPEPosterior(self.npe, self.x.expand(*batch_shape, *self.npe.x_shape), self._validate_args)

    def __repr__(self) -> str:
        return f"NPEPosterior(batch_shape={tuple(self.batch_shape)}, event_shape={tuple(self.event_shape)})"
