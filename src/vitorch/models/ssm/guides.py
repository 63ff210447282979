"""Variational posteriors for state-space models.

* `MarkovGaussianGuide` — free parameters for one series: a Gaussian Markov
  chain, the family that contains the exact posterior of a linear-Gaussian model.
* `StructuredInferenceNetwork` — the amortized "deep Kalman smoother" of
  Krishnan, Shalit & Sontag (2017): a backward RNN reads ``y_{t:T}``, and a
  combiner mixes its state with the previous latent state, so
  ``q(x_{1:T} | y) = prod_t q(x_t | x_{t-1}, y_{t:T})`` keeps the Markov structure
  of the true posterior.

References:
    Krishnan, Shalit & Sontag, Structured Inference Networks for Nonlinear State
    Space Models (AAAI 2017), sec. 4 ("ST-R" with the combiner function).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ._protocol import one_series
from .chain import GaussianMarkovChain
from .path import AutoregressiveGaussianPath

__all__ = ["MarkovGaussianGuide", "StructuredInferenceNetwork", "DMMCombiner"]


def _tril(raw_off: Tensor, raw_diag: Tensor, min_scale: float) -> Tensor:
    return raw_off.tril(-1) + torch.diag_embed(F.softplus(raw_diag) + min_scale)


class MarkovGaussianGuide(nn.Module):
    """``q(x_{1:T}) = N(x_1; a, L_1 L_1^T) prod_t N(x_t; A_t x_{t-1} + c_t, L_t L_t^T)`` with free parameters.

    Args:
        num_steps: ``T``.
        state_dim: ``D``.
        init_scale: starting standard deviation of every conditional.
        min_scale: floor on the Cholesky diagonals (keeps ``log q`` finite).

    Calling the module returns a `GaussianMarkovChain` with event ``[T, D]``: with no
    argument its batch is ``[]``; called with the series ``y [*B, T, p]`` (``B`` all ones, e.g.
    ``[1]``), as `SSMVI` calls every guide, its batch is ``[*B]``.

    References:
        Archer, Park, Buesing, Cunningham & Paninski, *Black Box Variational Inference for State
        Space Models* (arXiv:1511.07367, 2015): Gaussian Markov posteriors over paths.
    """

    def __init__(self, num_steps: int, state_dim: int, init_scale: float = 1.0, min_scale: float = 1e-5):
        super().__init__()
        if num_steps < 1 or state_dim < 1:
            raise ValueError(f"num_steps and state_dim must be >= 1; got {num_steps}, {state_dim}")
        if not init_scale > min_scale:
            raise ValueError(f"init_scale must exceed min_scale; got {init_scale} <= {min_scale}")
        T, D = num_steps, state_dim
        raw = torch.tensor(init_scale - min_scale).expm1().log()  # softplus^{-1}
        self.min_scale = min_scale
        self.init_loc = nn.Parameter(torch.zeros(D))
        self.init_off = nn.Parameter(torch.zeros(D, D))
        self.init_diag = nn.Parameter(raw.expand(D).clone())
        self.trans_matrix = nn.Parameter(torch.zeros(T - 1, D, D))
        self.trans_offset = nn.Parameter(torch.zeros(T - 1, D))
        self.trans_off = nn.Parameter(torch.zeros(T - 1, D, D))
        self.trans_diag = nn.Parameter(raw.expand(T - 1, D).clone())

    def forward(self, y: Tensor | None = None) -> GaussianMarkovChain:
        """``q(x_{1:T})``; ``y [*B, T, p]``, one series, only sets the batch shape ``[*B]``."""
        batch = () if y is None else one_series(type(self).__name__, y, self.trans_matrix.shape[0] + 1)
        return GaussianMarkovChain(
            self.init_loc.expand(*batch, self.init_loc.shape[-1]),
            _tril(self.init_off, self.init_diag, self.min_scale),
            self.trans_matrix,
            self.trans_offset,
            _tril(self.trans_off, self.trans_diag, self.min_scale),
            validate_args=False,
        )


class DMMCombiner(nn.Module):
    """Krishnan et al.'s combiner: ``h = (tanh(W x_{t-1} + b) + h_rnn_t) / 2``, then a Gaussian head.

    ``(x_prev [..., D], h_rnn [..., H]) -> (loc [..., D], scale [..., D])``.

    References:
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, state_dim: int, rnn_dim: int, min_scale: float = 1e-4):
        super().__init__()
        self.from_state = nn.Linear(state_dim, rnn_dim)
        self.loc = nn.Linear(rnn_dim, state_dim)
        self.scale = nn.Linear(rnn_dim, state_dim)
        self.min_scale = min_scale

    def forward(self, x_prev: Tensor, h_rnn: Tensor) -> tuple[Tensor, Tensor]:
        h = 0.5 * (torch.tanh(self.from_state(x_prev)) + h_rnn)
        return self.loc(h), F.softplus(self.scale(h)) + self.min_scale


class StructuredInferenceNetwork(nn.Module):
    """Amortized structured posterior ``q(x_t | x_{t-1}, y_{t:T})`` (deep Markov model guide).

    Args:
        obs_dim: ``p``; state_dim: ``D``.
        rnn_dim: hidden size of the backward GRU and of the combiner.
        embed: optional module applied to ``y`` before the RNN (e.g. ``log1p`` of counts).

    Calling it on ``y [*B, T, p]`` returns an `AutoregressiveGaussianPath` with batch
    ``[*B]`` and event ``[T, D]``: sampling costs ``T`` combiner calls, ``log_prob`` one.

    Example:
        >>> guide = StructuredInferenceNetwork(obs_dim=1, state_dim=2)
        >>> vi = SSMVI(model, guide, num_particles=8, objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
        >>> out = vi(y)                                   # y [B, T, 1] -> LossOutput, bound [B]

    References:
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
    """

    def __init__(self, obs_dim: int, state_dim: int, rnn_dim: int = 32, embed: nn.Module | None = None):
        super().__init__()
        self.embed = embed if embed is not None else nn.Identity()
        self.rnn = nn.GRU(obs_dim, rnn_dim, batch_first=True)
        self.combiner = DMMCombiner(state_dim, rnn_dim)
        self.x0 = nn.Parameter(torch.zeros(state_dim))

    def forward(self, y: Tensor) -> AutoregressiveGaussianPath:
        if y.dim() < 2:
            raise ValueError(f"StructuredInferenceNetwork: y must be [*batch, T, obs_dim]; got {tuple(y.shape)}")
        batch, (T, p) = y.shape[:-2], y.shape[-2:]
        feats = self.embed(y.reshape(-1, T, p))
        # Backward in time: the state at t summarizes y_{t:T}.
        h, _ = self.rnn(feats.flip(1))
        h = h.flip(1).reshape(*batch, T, -1)
        return AutoregressiveGaussianPath(self.combiner, h, self.x0)
