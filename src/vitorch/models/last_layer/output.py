"""What a last-layer head returns for a batch of features."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor
from torch.distributions import Distribution

__all__ = ["LastLayerOutput"]


@dataclass
class LastLayerOutput:
    """The result of ``head(phi)``.

    Attributes:
        predictive: the posterior predictive ``p(y | phi, data)`` as a torch
            distribution with batch shape ``[N]`` (event ``[O]`` for several outputs).
        ood_score: ``[N]`` out-of-distribution score, larger meaning less like the
            training data (``None`` where a head defines none).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the closed-form predictives and out-of-distribution scores.
    """

    predictive: Distribution
    ood_score: Tensor | None = None
