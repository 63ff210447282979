"""Optimizers that learn a posterior over a network's weights while they train it.

`IVON` (Shen et al., 2024) trains a plain ``nn.Module`` like Adam and learns a diagonal
Gaussian posterior over its weights on the way; `bma_predict` averages the module's
predictions over that posterior.

Example:
    >>> opt = vitorch.optim.IVON(model.parameters(), lr=0.1, ess=len(train_set))
    >>> history = vitorch.fit(model, train_set, optimizer=opt, epochs=10)   # trains on sampled weights
    >>> probs = vitorch.optim.bma_predict(model, opt, x_test, samples=32)
"""

from .bma import bma_predict
from .ivon import IVON

__all__ = ["IVON", "bma_predict"]
