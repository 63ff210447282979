"""Baselines for the score-function estimator: what the learning signal is expected to be.

A baseline ``b`` subtracted from the learning signal leaves the gradient unbiased as long
as it does not depend on the particles, and can shrink its variance by orders of
magnitude.  Both baselines here learn from the objective's value per datum and skip a
datum whose bound sits at the floor ``-1e30`` (every particle impossible): that number
stands for ``-inf``, so averaging it in, or squaring it, would poison the baseline for
hundreds of steps.  Such data are counted in ``excluded``.

References:
    Williams, *Simple Statistical Gradient-Following Algorithms for Connectionist
    Reinforcement Learning* (Machine Learning, 1992); Ranganath, Gerrish & Blei,
    *Black Box Variational Inference* (AISTATS 2014); Mnih & Gregor, *Neural
    Variational Inference and Learning in Belief Networks* (ICML 2014).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import _logspace as ls

__all__ = ["MovingAverageBaseline", "LearnedBaseline"]


class _Counts(nn.Module):
    """Keeps ``excluded``: how many data were left out of the baseline's update."""

    def __init__(self):
        super().__init__()
        # A report, not state the computation depends on: checkpoints stay as they were.
        self.register_buffer("excluded", torch.zeros((), dtype=torch.int64), persistent=False)

    def _usable(self, target: Tensor) -> Tensor:
        ok = ls.finite_bound(target.detach())
        self.excluded.add_((~ok).sum())
        return ok


class MovingAverageBaseline(_Counts):
    """Exponential moving average of the learning signal, ``b <- decay b + (1 - decay) mean(O)``.

    A module so that its state is saved with the model and resumes exactly.  It keeps
    one scalar (shape ``[]``) and predicts it for every datum, ``[*batch]``.

    References:
        Williams, *Simple Statistical Gradient-Following Algorithms for Connectionist
        Reinforcement Learning* (Machine Learning, 1992); Ranganath et al. (2014).
    """

    def __init__(self, decay: float = 0.9):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"MovingAverageBaseline: decay must lie in [0, 1); got {decay!r}")
        self.decay = decay
        self.register_buffer("value", torch.zeros(()))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def predict(self, context, target: Tensor) -> Tensor:
        """``[*batch]``: the running average for every datum (0 before the first update)."""
        return self.value.to(target.dtype).expand(target.shape) if self.initialized else torch.zeros_like(target)

    def observe(self, target: Tensor, prediction: Tensor) -> None:
        """Fold the usable data's mean of ``target [*batch]`` into the average."""
        usable = target.detach()[self._usable(target)]
        if usable.numel() == 0:
            return None
        m = usable.mean().to(self.value.dtype)
        if self.initialized:
            self.value.mul_(self.decay).add_((1 - self.decay) * m)
        else:
            self.value.copy_(m)
            self.initialized.fill_(True)
        return None


class LearnedBaseline(_Counts):
    """An input-dependent baseline ``b(context)`` fitted by least squares to the learning signal.

    Args:
        net: module mapping the ``context`` passed to `vitorch.loss` to
            ``[*batch]`` (or ``[*batch, 1]``); ``None`` learns one scalar.

    Its regression loss ``mean((O - b)^2)`` over the usable data is added to the
    surrogate with zero value, so one ``backward`` trains it too: include its
    parameters in the optimizer.

    References:
        Mnih & Gregor, *Neural Variational Inference and Learning in Belief Networks*
        (ICML 2014): the input-dependent baseline fitted to the learning signal.
    """

    def __init__(self, net: nn.Module | None = None):
        super().__init__()
        self.net = net
        self.constant = nn.Parameter(torch.zeros(())) if net is None else None

    def predict(self, context, target: Tensor) -> Tensor:
        """``[*batch]``: ``b(context)``, or the learned constant."""
        if self.net is None:
            return self.constant.to(target.dtype).expand(target.shape)
        if context is None:
            raise ValueError("LearnedBaseline with a network needs vt.loss(..., context=...)")
        b = self.net(context)
        if b.shape != target.shape:
            if b.numel() != target.numel():
                raise ValueError(
                    f"LearnedBaseline: the network maps context to shape {tuple(b.shape)}; "
                    f"expected {tuple(target.shape)} (one value per datum)"
                )
            b = b.reshape(target.shape)
        return b

    def observe(self, target: Tensor, prediction: Tensor) -> Tensor:
        """The regression loss ``mean((O - b)^2)`` over the usable data (a scalar)."""
        ok = self._usable(target)
        residual = ls.masked(target.detach() - prediction, ok)
        return residual.pow(2).sum() / ok.sum().clamp(min=1)
