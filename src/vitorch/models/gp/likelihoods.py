"""Observation models ``p(y | f)`` with the three integrals a sparse GP needs.

For a Gaussian marginal ``q(f_n) = N(m_n, v_n)`` each likelihood gives

* ``expected_log_prob(y, m, v) = E_q log p(y | f)`` — the data term of the SVGP
  bound; closed form where one exists (Gaussian, Poisson), else by the
  likelihood's integrator (Gauss–Hermite by default, or Monte Carlo);
* ``log_predictive(y, m, v) = log E_q p(y | f)`` — the test log predictive density
  (its negative mean is the NLPD);
* ``predict(m, v)`` — the predictive mean and variance of ``y``.

Shapes: ``y``, ``m``, ``v`` are ``[N]`` (or broadcastable); results are ``[N]``.

References:
    Hensman, Matthews & Ghahramani, Scalable Variational Gaussian Process
    Classification (2015); Rasmussen & Williams (2006), sec. 3.9 (probit predictive).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._params import PositiveParam
from .quadrature import GaussHermite, MonteCarlo

__all__ = ["Likelihood", "GaussianLikelihood", "BernoulliLogit", "BernoulliProbit", "Poisson", "StudentT"]

_LOG_2PI = math.log(2 * math.pi)


class Likelihood(nn.Module):
    """Base class.  Subclasses implement `log_prob` and `check_y`.

    Args:
        integrator: `GaussHermite` (default, 20 nodes) or `MonteCarlo`.

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015):
        the expected log-likelihood by one-dimensional quadrature.
    """

    def __init__(self, integrator: GaussHermite | MonteCarlo | None = None):
        super().__init__()
        self.integrator = integrator if integrator is not None else GaussHermite(20)

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:  # pragma: no cover - abstract
        """``log p(y | f)`` elementwise; ``f`` may carry leading quadrature/sample dimensions."""
        raise NotImplementedError

    def check_y(self, y: Tensor) -> None:
        """Raise ``ValueError`` naming the support if ``y`` has values outside it, or NaN."""
        if not bool(torch.isfinite(y).all()):
            raise ValueError(f"{type(self).__name__}: y must be finite real numbers; found NaN or infinity")

    def expected_log_prob(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``E_{N(f; mean, var)} log p(y | f)``, shape ``[N]``."""
        return self.integrator.expect(lambda f: self.log_prob(f, y), mean, var)

    def log_predictive(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        """``log int p(y | f) N(f; mean, var) df``, shape ``[N]``."""
        return self.integrator.log_expect_exp(lambda f: self.log_prob(f, y), mean, var)

    def predict(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:  # pragma: no cover - abstract
        """Predictive mean and variance of ``y``, each ``[N]``."""
        raise NotImplementedError


class GaussianLikelihood(Likelihood):
    """``y = f + eps``, ``eps ~ N(0, noise)``; every integral in closed form.

    Args:
        noise: noise *variance* ``sigma^2`` (positive, learnable).

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Hensman, Fusi & Lawrence, *Gaussian Processes for Big Data* (UAI 2013): the closed-form expectation.
    """

    def __init__(self, noise: float | Tensor = 1.0, integrator: GaussHermite | MonteCarlo | None = None):
        super().__init__(integrator)
        self._noise = PositiveParam(noise, "noise", "GaussianLikelihood")

    @property
    def noise(self) -> Tensor:
        return self._noise()

    @noise.setter
    def noise(self, value) -> None:
        self._noise.set(value)

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        s2 = self.noise
        return -0.5 * (_LOG_2PI + s2.log() + (y - f).pow(2) / s2)

    def expected_log_prob(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        # E[(y - f)^2] = (y - m)^2 + v
        s2 = self.noise
        return -0.5 * (_LOG_2PI + s2.log() + ((y - mean).pow(2) + var) / s2)

    def log_predictive(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        tot = var + self.noise
        return -0.5 * (_LOG_2PI + tot.log() + (y - mean).pow(2) / tot)

    def predict(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        return mean, var + self.noise


class _Bernoulli(Likelihood):
    """Shared parts of the binary likelihoods, ``y in {0, 1}``."""

    def check_y(self, y: Tensor) -> None:
        if not bool(((y == 0) | (y == 1)).all()):
            raise ValueError(f"{type(self).__name__}: y must lie in the support {{0, 1}}; found other values or NaN")

    def predict_proba(self, mean: Tensor, var: Tensor) -> Tensor:
        """``P(y = 1) = E_{N(f; mean, var)} p(y = 1 | f)``, shape ``[N]``."""
        return self.log_predictive(torch.ones_like(mean), mean, var).exp()

    def predict(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """``(p, p (1 - p))`` with ``p = P(y = 1)``: the predictive mean and variance of ``y``."""
        p = self.predict_proba(mean, var)
        return p, p * (1 - p)


class BernoulliLogit(_Bernoulli):
    """``p(y = 1 | f) = sigmoid(f)``; expectations by the integrator (Gauss–Hermite by default).

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        # log sigmoid((2y - 1) f), stable for large |f|
        return -F.softplus(-(2 * y - 1) * f)


class BernoulliProbit(_Bernoulli):
    """``p(y = 1 | f) = Phi(f)``; the predictive ``Phi(m / sqrt(1 + v))`` is exact.

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        section 3.9 (the exact probit predictive).
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015).
    """

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        return torch.special.log_ndtr((2 * y - 1) * f)

    def log_predictive(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        return torch.special.log_ndtr((2 * y - 1) * mean / torch.sqrt(1 + var))


class Poisson(Likelihood):
    """``y ~ Poisson(exp(f))`` for counts; the expected log-likelihood is closed form.

    ``E log p = y m - exp(m + v / 2) - log y!``.

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Hensman, Matthews & Ghahramani, *Scalable Variational Gaussian Process Classification* (AISTATS 2015);
        the log-normal moment ``E exp(f) = exp(m + v / 2)`` makes the expectation exact.
    """

    def check_y(self, y: Tensor) -> None:
        if not bool(((y >= 0) & (y == torch.floor(y)) & torch.isfinite(y)).all()):
            raise ValueError("Poisson: y must lie in the support of non-negative integers; found other values or NaN")

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        return y * f - f.exp() - torch.lgamma(y + 1)

    def expected_log_prob(self, y: Tensor, mean: Tensor, var: Tensor) -> Tensor:
        if isinstance(self.integrator, MonteCarlo):
            return super().expected_log_prob(y, mean, var)
        return y * mean - (mean + 0.5 * var).exp() - torch.lgamma(y + 1)

    def predict(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        # E[e^f] = e^{m + v/2};  Var y = E[e^f] + Var[e^f] = mu + (e^v - 1) mu^2
        mu = (mean + 0.5 * var).exp()
        return mu, mu + torch.expm1(var) * mu.pow(2)


class StudentT(Likelihood):
    """``y = f + scale * t_df``: heavy-tailed noise, robust to outliers.

    Args:
        df: degrees of freedom (positive; fixed).
        scale: noise scale (positive, learnable).

    Shapes: ``y``, ``mean`` and ``var`` of the latent ``f ~ N(mean, var)`` are ``[N]``;
    ``log_prob(f, y)`` broadcasts leading quadrature or sample dimensions of ``f``.

    References:
        Jylänki, Vanhatalo & Vehtari, *Robust Gaussian Process Regression with a Student-t Likelihood*
        (JMLR 2011).
    """

    def __init__(
        self, df: float | Tensor = 4.0, scale: float | Tensor = 1.0, integrator: GaussHermite | MonteCarlo | None = None
    ):
        super().__init__(integrator)
        self._df = PositiveParam(df, "df", "StudentT", learn=False)
        self._scale = PositiveParam(scale, "scale", "StudentT")

    @property
    def df(self) -> Tensor:
        return self._df()

    @property
    def scale(self) -> Tensor:
        return self._scale()

    def log_prob(self, f: Tensor, y: Tensor) -> Tensor:
        nu, s = self.df, self.scale
        z2 = ((y - f) / s).pow(2)
        return (
            torch.lgamma((nu + 1) / 2)
            - torch.lgamma(nu / 2)
            - 0.5 * torch.log(nu * math.pi)
            - s.log()
            - 0.5 * (nu + 1) * torch.log1p(z2 / nu)
        )

    def predict(self, mean: Tensor, var: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``m``; variance ``v + scale^2 df / (df - 2)`` (infinite for ``df <= 2``)."""
        nu = self.df
        noise = torch.where(nu > 2, self.scale.pow(2) * nu / (nu - 2).clamp_min(1e-30), torch.full_like(nu, math.inf))
        return mean, var + noise
