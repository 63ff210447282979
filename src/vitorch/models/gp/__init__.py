"""Gaussian processes: exact, collapsed sparse (SGPR), stochastic variational (SVGP) with CVI
natural gradients for any likelihood (`cvi_step`), and nearest-neighbour (NNGP).

The variational posterior over inducing values is a vitorch family
(`vitorch.families.FullRankNormal` or `vitorch.families.DiagNormal`)
and its KL to the prior is the core's closed form, so the GP zoo carries the
families over to function space.

Every trainable model (``ExactGP``, ``SGPR``, ``SVGP``) follows the model protocol:
``model((X, y))`` returns a `vitorch.LossOutput` whose ``bound`` is each datum's
share of the full-data bound and whose ``loss`` is ``-mean(bound)``, so `vitorch.fit`
trains it; predictions go through ``predict``.

Example:
    >>> from vitorch.models import gp
    >>> k = gp.RBF(lengthscale=1.0, variance=1.0)
    >>> gp.ExactGP(k, noise=0.1).log_marginal_likelihood(X, y)
    >>> gp.SGPR(k, Z, noise=0.1).full_data_elbo(X, y)
    >>> model = gp.SVGP(k, Z, likelihood=gp.GaussianLikelihood(noise=0.1), num_data=N)
    >>> vt.fit(model, (X, y), epochs=10, batch_size=256); model.predict(X_test)
"""

from .cvi import Sites, cvi_step, dual_elbo, ep_objective, q_from_sites, site_parameters
from .exact import ExactGP
from .inducing import greedy_variance, kmeans
from .kernels import (
    RBF,
    Kernel,
    Linear,
    Matern12,
    Matern32,
    Matern52,
    Periodic,
    Product,
    RationalQuadratic,
    Scale,
    Stationary,
    Sum,
)
from .likelihoods import BernoulliLogit, BernoulliProbit, GaussianLikelihood, Likelihood, Poisson, StudentT
from .linalg import JitterWarning, NotPositiveDefiniteError, jittered_cholesky
from .means import ConstantMean, ZeroMean
from .metrics import gaussian_nlpd, nlpd, rmse
from .nngp import NNGP, nearest_neighbours, sequential_neighbours
from .quadrature import GaussHermite, MonteCarlo
from .sgpr import SGPR
from .svgp import SVGP

__all__ = [
    "ExactGP",
    "SGPR",
    "SVGP",
    "NNGP",
    "nearest_neighbours",
    "sequential_neighbours",
    "cvi_step",
    "site_parameters",
    "Sites",
    "q_from_sites",
    "dual_elbo",
    "ep_objective",
    "Kernel",
    "Stationary",
    "RBF",
    "Matern12",
    "Matern32",
    "Matern52",
    "RationalQuadratic",
    "Periodic",
    "Linear",
    "Sum",
    "Product",
    "Scale",
    "ZeroMean",
    "ConstantMean",
    "Likelihood",
    "GaussianLikelihood",
    "BernoulliLogit",
    "BernoulliProbit",
    "Poisson",
    "StudentT",
    "GaussHermite",
    "MonteCarlo",
    "kmeans",
    "greedy_variance",
    "jittered_cholesky",
    "JitterWarning",
    "NotPositiveDefiniteError",
    "rmse",
    "nlpd",
    "gaussian_nlpd",
]
