"""A feature network and a VBLL head as one model that `vitorch.fit` trains.

The heads are layers: ``head(phi)`` gives the predictive, ``head.loss(phi, y, N)`` the
minibatch bound as a `vitorch.LossOutput`.  `VBLLModel` puts a feature
network in front of a head and follows the model protocol that every vitorch zoo
follows: ``forward((x, y))`` returns the `vitorch.LossOutput` (``bound [B]``
each datum's share of the full-data bound, ``loss = -mean(bound)``) and ``predict(x)``
the head's `vitorch.models.last_layer.LastLayerOutput`.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...loss import LossOutput
from . import _checks
from .output import LastLayerOutput

__all__ = ["VBLLModel"]


class VBLLModel(nn.Module):
    """``features`` then a VBLL ``head``, trained end to end on the head's deterministic bound.

    Args:
        features: an ``nn.Module`` mapping inputs ``x [B, ...]`` to features ``phi [B, D]``
            (``nn.Identity()`` for fixed features).
        head: a last-layer head (`VBLLRegression`, `VBLLHeteroscedasticRegression`,
            `VBLLClassification`, ...): ``head.loss(phi, y, num_data)`` returns a
            `vitorch.LossOutput` and ``head(phi)`` a `LastLayerOutput`.
        num_data: N, the size of the training set, which weighs the KL term.

    Shapes: a batch is ``(x [B, ...], y [B, ...])`` (targets ``[B]`` / ``[B, O]``, or labels
    ``[B]``); ``forward(batch).bound`` is ``[B]``.

    Example:
        >>> model = VBLLModel(nn.Sequential(nn.Linear(10, 64), nn.ELU()), VBLLRegression(64), num_data=len(y))
        >>> vt.fit(model, (x, y), steps=1000, batch_size=32)
        >>> model.predict(x_test).predictive            # Normal, batch [N_test]
        >>> model.solve_posterior(x, y, tune=True)      # closed-form refit of the head on the trained features

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024): the
        features and the last layer trained together on the deterministic bound.
    """

    def __init__(self, features: nn.Module, head: nn.Module, num_data: int):
        super().__init__()
        if not isinstance(features, nn.Module) or not isinstance(head, nn.Module):
            raise TypeError(
                f"VBLLModel: features and head must be nn.Modules; got {type(features).__name__} "
                f"and {type(head).__name__}"
            )
        self.features, self.head = features, head
        self.num_data = _checks.positive_int("VBLLModel", "num_data", num_data)

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """The head's minibatch bound on ``(x [B, ...], y [B, ...])``: ``loss`` scalar, ``bound [B]``."""
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
            raise ValueError(f"VBLLModel: a batch is a pair (x, y); got {type(batch).__name__}")
        x, y = batch
        return self.head.loss(self.features(x), y, self.num_data)

    def predict(self, x: Tensor) -> LastLayerOutput:
        """The head's predictive (and OOD score, where it has one) at inputs ``x [N, ...]``: batch ``[N]``."""
        return self.head(self.features(x))

    def solve_posterior(self, x: Tensor, y: Tensor, **kwargs) -> VBLLModel:
        """Refit the head on the features of ``x [N, ...]`` (no gradient), by its ``solve_posterior``; returns ``self``.

        The features are cast to the head's dtype, so ``model.head.double()`` first gives a
        float64 refit.  Keyword arguments go to the head's ``solve_posterior`` (e.g. ``tune=True``).
        """
        dtype = next(t for t in self.head.state_dict().values() if t.is_floating_point()).dtype
        with torch.no_grad():
            phi = self.features(x).to(dtype)
        y = y.to(dtype) if y.is_floating_point() else y
        self.head.solve_posterior(phi, y, **kwargs)
        return self
