"""One-dimensional Gaussian expectations ``E_{N(f; m, v)}[g(f)]``, elementwise over ``[N]``.

The SVGP bound needs ``E_{q(f_n)} log p(y_n | f_n)`` for each datum under a
univariate Gaussian marginal ``q(f_n) = N(m_n, v_n)``.  Two integrators share one
interface, so any likelihood can use either:

* `GaussHermite` — ``sum_i (w_i / sqrt(pi)) g(m + sqrt(2 v) x_i)`` with the
  Gauss–Hermite nodes ``x_i`` and weights ``w_i``; exact for polynomials of degree
  ``< 2 * num_points``, deterministic, differentiable in ``m`` and ``v``;
* `MonteCarlo` — `vitorch.expect` under the core's
  `vitorch.families.DiagNormal`, with its gradient estimator:
  reparameterized draws (``vt.estimators.reparam``, the default; Kingma & Welling,
  2014) or the score function (``vt.estimators.score()``), so that a likelihood
  that is not differentiable in ``f`` can still be trained.

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

from ...estimators import Estimator, reparam
from ...expect import expect
from ...families import DiagNormal

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
        estimator: the gradient estimator of `vitorch.expect`: ``None`` or
            ``vt.estimators.reparam`` for pathwise gradients, ``vt.estimators.score()``
            for the score function (no derivative of ``g`` needed).

    Raises:
        ValueError: if ``num_samples < 1`` or `vitorch.expect` does not take ``estimator``
            (a bound estimator such as STL or DReG).

    Shapes: ``expect(g, mean [N], var [N]) -> [N]``; ``g`` sees ``f [num_samples, N]``.

    References:
        Kingma & Welling, *Auto-Encoding Variational Bayes* (ICLR 2014): reparameterized draws.
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def __init__(self, num_samples: int = 64, estimator: Estimator | None = None):
        if int(num_samples) < 1:
            raise ValueError(f"MonteCarlo: num_samples must be >= 1; got {num_samples}")
        self.num_samples = int(num_samples)
        self.estimator = reparam if estimator is None else estimator
        # vt.expect owns the rule for which estimators estimate expectations: ask it once, now, on a
        # one-point problem, so a bound estimator is refused at construction rather than mid-training
        # (on a forked generator: building an integrator must not move the caller's random stream).
        try:
            with torch.random.fork_rng(devices=[]):
                one = torch.ones(1, 1)
                expect(lambda z: z.sum(-1), DiagNormal(one, one), 1, self.estimator)
        except ValueError as err:
            raise ValueError(f"MonteCarlo: {err}") from None

    def _q(self, mean: Tensor, var: Tensor) -> DiagNormal:
        """``N(mean, var)`` elementwise as a family with batch ``[n]`` and event ``[1]``."""
        n = mean.numel()
        return DiagNormal(mean.reshape(n, 1), var.clamp_min(_MIN_VAR).sqrt().reshape(n, 1), validate_args=False)

    def expect(self, g: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """Unbiased estimate of ``E[g(f)]`` for ``f ~ N(mean, var)``, elementwise over ``mean``'s shape;
        its gradient is the estimator's."""
        shape, n, k = mean.shape, mean.numel(), self.num_samples

        def values(f: Tensor) -> Tensor:  # [K, n, 1] -> [K, n]
            return g(f.reshape(k, *shape)).reshape(k, n)

        return expect(values, self._q(mean, var), k, self.estimator).reshape(shape)

    def log_expect_exp(self, h: Callable[[Tensor], Tensor], mean: Tensor, var: Tensor) -> Tensor:
        """``log mean_k exp(h(f_k))`` (a consistent, downward-biased estimate of ``log E[exp h]``).

        The log sits outside the mean, so this is not an expectation for `vitorch.expect`:
        it is the K-sample importance-weighted (IWAE) estimate with the marginal itself as the
        proposal, a lower bound in expectation, used to evaluate log predictive densities.
        Plain reparameterized draws suffice (pathwise gradients, should anyone ask).
        """
        k = self.num_samples
        f = self._q(mean, var).rsample((k,)).reshape(k, *mean.shape)
        return torch.logsumexp(h(f), dim=0) - math.log(k)
