"""Elementwise transforms: a learned affine layer and fixed maps onto constrained supports.

``ElementwiseAffine`` gives a flow a learned location and scale (put it first, on the
standard normal base, to make a diagonal Gaussian the starting point).  ``Softplus``
and ``Sigmoid`` map ``R^D`` onto ``(0, inf)^D`` and ``(0, 1)^D``; as a flow's last layer
they give a family with that support.  All are one cheap pass in both directions.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021), sec. 3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.distributions import constraints
from torch.nn import functional as F

from .base import ParamNet, Transform

__all__ = ["ElementwiseAffine", "Softplus", "Sigmoid"]


class ElementwiseAffine(Transform):
    """``y = loc + exp(log_scale) * x`` per dimension.

    Args:
        dim: event size ``D``.
        context_features: ``C``; when positive, ``loc`` and ``log_scale`` come from a
            hypernetwork of the context (this is then a diagonal-Gaussian head).
        hidden: hidden widths of that hypernetwork.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021), sec. 3.
    """

    def __init__(self, dim: int, context_features: int = 0, hidden: Sequence[int] = (64,)):
        super().__init__(dim)
        self.params = ParamNet(2 * dim, context_features, hidden)

    def _loc_log_scale(self, context):
        p = self.params(context)
        return p[..., : self.dim], p[..., self.dim :]

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        loc, log_scale = self._loc_log_scale(context)
        y = loc + torch.exp(log_scale) * x
        return y, log_scale.sum(-1).expand(y.shape[:-1])

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        loc, log_scale = self._loc_log_scale(context)
        x = (y - loc) * torch.exp(-log_scale)
        return x, -log_scale.sum(-1).expand(x.shape[:-1])


class Softplus(Transform):
    """``y = log(1 + e^x)``, onto ``(0, inf)^D``; ``log dy/dx = -softplus(-x)``.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021), sec. 3.
    """

    codomain = constraints.positive

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        return F.softplus(x), -F.softplus(-x).sum(-1)

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        x = y + torch.log(-torch.expm1(-y))  # log(e^y - 1) without overflow
        return x, F.softplus(-x).sum(-1)


class Sigmoid(Transform):
    """``y = 1 / (1 + e^-x)``, onto ``(0, 1)^D``; ``log dy/dx = -softplus(-x) - softplus(x)``.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``.

    References:
        Papamakarios et al., Normalizing Flows for Probabilistic Modeling and Inference (JMLR 2021), sec. 3.
    """

    codomain = constraints.unit_interval

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        return torch.sigmoid(x), -(F.softplus(-x) + F.softplus(x)).sum(-1)

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        x = torch.logit(y)
        return x, (F.softplus(-x) + F.softplus(x)).sum(-1)
