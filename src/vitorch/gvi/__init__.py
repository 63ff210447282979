"""Gaussian variational inference without a stochastic-gradient loop.

* `FBGVI`: forward-backward Gaussian VI in the Bures-Wasserstein space (Diao,
  Balasubramanian, Chewi & Salim, 2023), a proximal-gradient method on the
  ``FullRankNormal`` itself, with moments of the potential from Monte Carlo
  (`stein_moments`, `hessian_moments`), quadrature (`quadrature_moments`) or a
  closed form (`gaussian_moments`).
* `pathfinder` and `multipath_pathfinder`: normal approximations along an
  L-BFGS path, the one with the best ELBO, and importance resampling over several
  paths with Pareto-smoothed weights (Zhang, Carpenter, Gelman & Vehtari, 2022).

References:
    Diao, Balasubramanian, Chewi & Salim, *Forward-backward Gaussian variational inference
    via JKO in the Bures-Wasserstein space* (ICML 2023).
    Zhang, Carpenter, Gelman & Vehtari, *Pathfinder: Parallel quasi-Newton variational
    inference* (JMLR 2022).
"""

from .fbgvi import FBGVI, FBGVIResult, fbgvi_step
from .moments import Moments, gaussian_moments, hessian_moments, quadrature_moments, stein_moments
from .pathfinder import MultiPathfinderResult, PathfinderResult, multipath_pathfinder, pathfinder

__all__ = [
    "FBGVI",
    "FBGVIResult",
    "fbgvi_step",
    "Moments",
    "stein_moments",
    "hessian_moments",
    "quadrature_moments",
    "gaussian_moments",
    "pathfinder",
    "multipath_pathfinder",
    "PathfinderResult",
    "MultiPathfinderResult",
]
