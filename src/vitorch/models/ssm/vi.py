"""Variational inference for a state-space model as one trainable module.

`SSMVI` pairs a model (anything with ``log_joint(x, y)``) with a guide (a
module called on the same data, ``guide(y)``, that returns a family over the latent
path), as Pyro's ``SVI(model, guide, ...)`` does, and follows the zoo protocol:
``forward(y)`` returns a `vitorch.LossOutput`, so `vitorch.fit` trains
the model's and the guide's parameters together, and ``predict(y)`` gives the
posterior mean of the latent path.

One datum is one sequence: a batch is ``y [B, T, obs_dim]`` and the bound is per
sequence, ``bound [B]`` (a lower bound on ``log p(y_b)`` for the ELBO and IWAE);
``loss = -mean(bound)``.  The model's parameters are point estimates (maximum
marginal likelihood, as in Krishnan et al.'s deep Markov models); latent parameters
with a prior, such as an SDE's rates, belong in the latent ``z`` with the path.

References:
    Krishnan, Shalit & Sontag, Structured Inference Networks for Nonlinear State
    Space Models (AAAI 2017).
    Ryder, Golightly, McGough & Prangle, Black-Box Variational Inference for
    Stochastic Differential Equations (ICML 2018).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ...estimators import reparam
from ...loss import LossOutput, loss
from ...objectives import elbo
from ._protocol import as_sequences

__all__ = ["SSMVI"]


class SSMVI(nn.Module):
    """A state-space model and its guide, trained by a variational bound: ``forward(y) -> LossOutput``.

    Args:
        model: the generative model, with ``log_joint(x [K, B, *event], y [B, T, p]) -> [K, B]``:
            a `StateSpaceModel`, `KalmanSSM`, `LinearGaussianSSM` or
            `EulerMaruyamaSDE` (whose latent ``z = [u, vec(x)]`` holds the rates too).
            If it is an ``nn.Module`` its parameters train with the guide's.
        guide: ``guide(y [B, T, p])`` returns a family with batch ``[B]`` over the latent:
            `StructuredInferenceNetwork` (amortized over sequences), or
            `MarkovGaussianGuide` and `SDEPosterior` (free parameters for one
            series, so ``B = 1``).
        num_particles: ``K`` draws per sequence.
        objective: a `vitorch.objectives` bound (``elbo``, ``iwae``, ...).
        estimator: a `vitorch.estimators` gradient estimator (``reparam``, ``stl``, ``dreg``, ...).

    ``forward(y)`` is ``vt.loss(lambda x: model.log_joint(x, y), guide(y), num_particles,
    objective, estimator)``: ``bound [B]`` per sequence, ``loss = -mean(bound)``.

    Example:
        >>> vi = ssm.SSMVI(model, ssm.StructuredInferenceNetwork(obs_dim=1, state_dim=2), num_particles=8,
        ...                objective=vt.objectives.iwae, estimator=vt.estimators.dreg)
        >>> vt.fit(vi, y, steps=2000, batch_size=16, lr=1e-2)   # y [N, T, 1]: N sequences
        >>> means = vi.predict(y)                              # [N, T, 2] posterior means

    References:
        Krishnan, Shalit & Sontag, *Structured Inference Networks for Nonlinear State Space Models*
        (AAAI 2017).
        Ranganath, Gerrish & Blei, *Black Box Variational Inference* (AISTATS 2014).
    """

    def __init__(
        self,
        model,
        guide: Callable,
        num_particles: int = 1,
        objective: Callable = elbo,
        estimator: Callable = reparam,
    ):
        super().__init__()
        if not callable(getattr(model, "log_joint", None)):
            raise TypeError(f"SSMVI: model must have a log_joint(x, y) method; got {type(model).__name__}")
        if not callable(guide):
            raise TypeError(f"SSMVI: guide must be callable as guide(y); got {type(guide).__name__}")
        self.model, self.guide = model, guide
        self.num_particles, self.objective, self.estimator = num_particles, objective, estimator

    def forward(self, y) -> LossOutput:
        """The training loss on a batch of sequences ``y [B, T, p]``: ``bound [B]``, ``loss = -mean(bound)``."""
        y = as_sequences(type(self).__name__, y)
        return loss(
            lambda x: self.model.log_joint(x, y), self.guide(y), self.num_particles, self.objective, self.estimator
        )

    @torch.no_grad()
    def predict(self, y, num_samples: int = 256) -> Tensor:
        """Posterior mean of the latent under the guide, ``[B, *event]`` (the path ``[B, T, D]``).

        Exact where the family has a closed-form mean (`GaussianMarkovChain`), otherwise
        the average of ``num_samples`` draws.  For `EulerMaruyamaSDE` the latent is
        ``z = [u, vec(x)]``; ``model.split`` takes it apart.
        """
        q = self.guide(as_sequences(type(self).__name__, y))
        try:
            return q.mean
        except NotImplementedError:
            return q.sample((num_samples,)).mean(0)
