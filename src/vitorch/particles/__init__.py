"""Particle variational inference: SVGD and coin sampling, returning an empirical distribution.

A set of ``n`` particles in ``R^D`` is moved, all at once, towards a target known up to
a constant through ``log_prob: [n, D] -> [n]`` (``model.log_density`` of a
`vitorch.model.Model` is one)::

    svgd = SVGD(log_prob, x0, lr=0.1)       # Liu & Wang (2016): needs a learning rate
    q = svgd.run(1000)                      # a Particles distribution
    q = CoinSVGD(log_prob, x0).run(1000)    # Sharrock & Nemeth (2023): no learning rate

* `Particles`: the empirical measure of ``[n, D]`` points as a torch Distribution
  (``sample``/``rsample`` pick particles uniformly; moments; no ``log_prob``).
* `SVGD`: Stein variational gradient descent with an RBF kernel (median-heuristic
  bandwidth), any torch optimizer, and optional preconditioning by a fixed or
  particle-dependent matrix ``Q`` (Wang, Tang, Bajaj & Liu, 2019; `mean_hessian`).
* `CoinSVGD`: the same Stein direction with coin-betting steps, learning-rate free.

Measure the result with `vitorch.diagnostics.ksd`, the kernelized Stein discrepancy.

References:
    Liu & Wang, *Stein Variational Gradient Descent: A General Purpose Bayesian Inference
    Algorithm* (NeurIPS 2016).
    Sharrock & Nemeth, *Coin Sampling: Gradient-Based Bayesian Inference without Learning
    Rates* (ICML 2023).
    Wang, Tang, Bajaj & Liu, *Stein Variational Gradient Descent with Matrix-Valued Kernels*
    (NeurIPS 2019).
"""

from .coin import CoinSVGD
from .empirical import Particles
from .kernel import mean_hessian, median_bandwidth, svgd_direction
from .svgd import SVGD, ParticleMethod

__all__ = [
    "Particles",
    "SVGD",
    "CoinSVGD",
    "ParticleMethod",
    "svgd_direction",
    "median_bandwidth",
    "mean_hessian",
]
