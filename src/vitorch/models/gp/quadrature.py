"""One-dimensional Gaussian expectations ``E_{N(f; m, v)}[g(f)]``, elementwise over ``[N]``.

The SVGP bound needs ``E_{q(f_n)} log p(y_n | f_n)`` for each datum under a
univariate Gaussian marginal ``q(f_n) = N(m_n, v_n)``.  Two integrators share one
interface, so any likelihood can use either:

* :class:`GaussHermite` — ``sum_i (w_i / sqrt(pi)) g(m + sqrt(2 v) x_i)`` with the
  Gauss–Hermite nodes ``x_i`` and weights ``w_i``; exact for polynomials of degree
  ``< 2 * num_points``, deterministic, differentiable in ``m`` and ``v``;
* :class:`MonteCarlo` — draws from the core's :class:`~vitorch.families.DiagNormal`:
  plain reparameterized draws (Kingma & Welling, 2014), or, given a core
  estimator (``vt.estimators.stl``, ``reparam``, ``score()``, ...), the surrogate of
  :func:`vitorch.loss`, so that a likelihood that is not differentiable in ``f``
  can still be trained by the score-function estimator.

Both also give ``log E[exp(h(f))]`` in log space, for log predictive densities.

References:
    Hensman, Matthews & Ghahramani, Scalable Variational Gaussian Process
    Classification (2015), sec. 3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from ...estimators import Estimator
from ...families import DiagNormal, stopped
from ...loss import loss as vt_loss
from ...objectives import elbo

__all__ = ["GaussHermite", "MonteCarlo"]

_MIN_VAR = 1e-30


class GaussHermite:
    """Gauss–Hermite quadrature with ``num_points`` nodes.

    Args:
        num_points: number of nodes (>= 1); 20 integrates the usual likelihoods to
            well below Monte Carlo error at any plausible predictive variance.

    Raises:
        ValueError: if ``num_points < 1``.

    Shapes: ``expect(g, mean [N], var [N]) -> [N]`` computes ``E_{N(f; mean, var)} g(f)``; ``g`` sees
    ``f [num_points, N]``.

    References:
        Abramowitz & Stegun, *Handbook of Mathematical Functions* (1964), 25.4.46.
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def __init__(self, num_points: int = 20):
        if int(num_points) < 1:
            raise ValueError(f"GaussHermite: num_points must be >= 1; got {num_points}")
        self.num_points = int(num_points)
        x, w = np.polynomial.hermite.hermgauss(self.num_points)
        self._x = torch.from_numpy(x * math.sqrt(2.0))  # nodes for a standard normal
        self._log_w = torch.from_numpy(np.log(w) - 0.5 * math.log(math.pi))
        self._cache: dict[tuple, tuple[Tensor, Tensor]] = {}

    def _nodes(self, like: Tensor) -> tuple[Tensor, Tensor]:
        key = (like.dtype, like.device)
        if key not in self._cache:
            self._cache[key] = (
                self._x.to(device=like.device, dtype=like.dtype),
                self._log_w.to(device=like.device, dtype=like.dtype),
            )
        return self._cache[key]

    def _points(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        x, log_w = self._nodes(mean)
        f = mean.unsqueeze(0) + var.clamp_min(_MIN_VAR).sqrt().unsqueeze(0) * x.view(-1, *([1] * mean.dim()))
        return f, log_w.view(-1, *([1] * mean.dim()))

    def expect(self, g: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """``E[g(f)]`` for ``f ~ N(mean, var)``; ``g`` maps ``[P, *shape] -> [P, *shape]``."""
        f, log_w = self._points(mean, var)
        return (log_w.exp() * g(f)).sum(0)

    def log_expect_exp(self, h: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """``log E[exp(h(f))]`` computed by log-sum-exp over the nodes."""
        f, log_w = self._points(mean, var)
        return torch.logsumexp(log_w + h(f), dim=0)


class MonteCarlo:
    """Monte Carlo with ``num_samples`` draws from ``DiagNormal(mean, sqrt(var))``.

    Args:
        num_samples: draws per evaluation (>= 1).
        estimator: ``None`` for plain reparameterized draws, or a core estimator
            (:mod:`vitorch.estimators`).  With an estimator, ``E[g(f)]`` is computed
            by :func:`vitorch.loss` as the ELBO of the log-joint
            ``g(f) + log q_stopped(f)``, whose log-weights equal ``g(f)``; the value
            is the plain estimate, the gradient the estimator's (``stl`` gives the
            pure pathwise gradient, ``score()`` needs no derivative of ``g``).

    Raises:
        ValueError: if ``num_samples < 1``.

    Shapes: ``expect(g, mean [N], var [N]) -> [N]``; ``g`` sees ``f [num_samples, N]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): reparameterized draws.
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def __init__(self, num_samples: int = 64, estimator: Estimator | None = None):
        if int(num_samples) < 1:
            raise ValueError(f"MonteCarlo: num_samples must be >= 1; got {num_samples}")
        self.num_samples = int(num_samples)
        self.estimator = estimator

    def _draw(self, mean: Tensor, var: Tensor) -> Tensor:
        q = DiagNormal(mean.reshape(-1), var.clamp_min(_MIN_VAR).sqrt().reshape(-1), validate_args=False)
        return q.rsample((self.num_samples,)).reshape(self.num_samples, *mean.shape)

    def expect(self, g: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """Unbiased estimate of ``E[g(f)]`` for ``f ~ N(mean, var)``, elementwise over ``mean``'s shape."""
        if self.estimator is None:
            return g(self._draw(mean, var)).mean(0)
        shape, n = mean.shape, mean.numel()
        q = DiagNormal(mean.reshape(n, 1), var.clamp_min(_MIN_VAR).sqrt().reshape(n, 1), validate_args=False)
        q_stop = stopped(q)

        def log_joint(f: Tensor) -> Tensor:  # [K, n, 1] -> [K, n]; log w = g(f) in value
            return g(f.squeeze(-1).reshape(self.num_samples, *shape)).reshape(self.num_samples, n) + q_stop.log_prob(f)

        out = vt_loss(log_joint, q, self.num_samples, objective=elbo, estimator=self.estimator)
        total = -out.loss * n  # value: sum over data of the estimates; gradient: the estimator's
        return (out.bound + (total - total.detach()) / n).reshape(shape)

    def log_expect_exp(self, h: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """``log mean_k exp(h(f_k))`` (a consistent, downward-biased estimate of ``log E[exp h]``)."""
        return torch.logsumexp(h(self._draw(mean, var)), dim=0) - math.log(self.num_samples)
