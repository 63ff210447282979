"""Student-t VBLL regression: a Bayesian noise precision with the normal-gamma prior.

Model, for each output ``i`` (Harrison et al., 2024, the variant that infers the noise):

    tau_i ~ Gamma(a_0, b_0),   w_i | tau_i ~ N(0, s^2 / tau_i I),   y_ni ~ N(w_i^T phi_n, 1 / tau_i).

Posterior family ``q(tau_i) q(w_i | tau_i) = Gamma(a_i, b_i) N(m_i, S_i / tau_i)``,
which contains the exact (normal-gamma) posterior.  The ELBO is sampling-free:

    E log p(y | w, tau) = 1/2 (psi(a) - log b) - 1/2 log 2 pi - 1/2 [(a/b) (y - m^T phi)^2 + phi^T S phi],
    E KL(q(w | tau) || p(w | tau)) = 1/2 [tr(S)/s^2 + (a/b) m^T m / s^2 - D + D log s^2 - log|S|],

minus ``KL(Gamma(a, b) || Gamma(a_0, b_0))``.  At the exact posterior it equals the
log evidence, a multivariate Student-t density of ``y``; the predictive is
``StudentT(2a, m^T phi, sqrt((b/a)(1 + phi^T S phi)))``.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024);
    Bishop, *Pattern Recognition and Machine Learning* (2006), Sec. 2.3.6 and 10.1.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Gamma, Independent, StudentT, kl_divergence

from . import _checks, _legacy
from ._bound import DeterministicBound
from .covariance import Dense, WeightPosterior
from .output import LastLayerOutput

__all__ = ["VBLLStudentTRegression"]

_LOG_2PI = math.log(2 * math.pi)


class VBLLStudentTRegression(DeterministicBound, nn.Module):
    """Regression head with a normal-gamma posterior over weights and noise precision.

    Args:
        in_features: D.
        out_features: O.
        prior_scale: ``s``; the weight prior is ``N(0, s^2 / tau)``.
        prior_concentration: ``a_0`` of the Gamma prior on the precision.
        prior_rate: ``b_0`` of that prior (prior mean precision ``a_0 / b_0``).
        covariance: weight-posterior factory (``Dense`` by default).

    Shapes: ``phi [N, D]``, ``y [N, O]`` (``[N]`` when ``O = 1``); the predictive is a
    ``StudentT`` with batch ``[N]`` (event ``[O]`` through ``Independent`` for ``O > 1``).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        the Student-t variant; Bishop, *Pattern Recognition and Machine Learning* (2006),
        Sec. 2.3.6-2.3.7 (the normal-gamma prior and Student-t predictive).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        prior_scale: float = 1.0,
        prior_concentration: float = 1.0,
        prior_rate: float = 1.0,
        *,
        covariance: Callable[..., WeightPosterior] = Dense,
    ):
        super().__init__()
        owner = type(self).__name__
        self.in_features = _checks.positive_int(owner, "in_features", in_features)
        self.out_features = _checks.positive_int(owner, "out_features", out_features)
        self.prior_scale = _checks.positive_float(owner, "prior_scale", prior_scale)
        self.prior_concentration = _checks.positive_float(owner, "prior_concentration", prior_concentration)
        self.prior_rate = _checks.positive_float(owner, "prior_rate", prior_rate)
        self.weights = covariance(out_features, in_features, init_variance=self.prior_scale**2)
        if not isinstance(self.weights, WeightPosterior):
            raise ValueError(f"{owner}: covariance must build a WeightPosterior; got {type(self.weights).__name__}")
        self.log_concentration = nn.Parameter(torch.full((out_features,), math.log(self.prior_concentration)))
        self.log_rate = nn.Parameter(torch.full((out_features,), math.log(self.prior_rate)))

    def _check(self, phi: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _checks.features(owner, phi, self.in_features)
        if y is None:
            return phi, None
        return phi, _checks.targets(owner, y, phi.shape[0], self.out_features).to(phi.dtype)

    def precision_posterior(self) -> Gamma:
        """``q(tau)``, batch ``[O]``."""
        return Gamma(self.log_concentration.exp(), self.log_rate.exp())

    def _prior(self) -> Gamma:
        a0 = torch.full_like(self.log_rate, self.prior_concentration)
        return Gamma(a0, torch.full_like(self.log_rate, self.prior_rate))

    def expected_log_likelihood(self, phi: Tensor, y: Tensor) -> Tensor:
        """``E_q log p(y_n | phi_n, w, tau)`` summed over outputs, ``[N]``."""
        phi, y = self._check(phi, y)
        a, b = self.log_concentration.exp(), self.log_rate.exp()
        sq = (a / b) * (y - phi @ self.weights.mean.mT).pow(2) + self.weights.quad(phi)
        return (0.5 * (torch.digamma(a) - b.log() - _LOG_2PI) - 0.5 * sq).sum(-1)

    def kl(self) -> Tensor:
        """``E_q(tau) KL(q(w | tau) || p(w | tau)) + KL(q(tau) || p(tau))`` summed over outputs."""
        w, v, d = self.weights, self.prior_scale**2, self.in_features
        e_tau = (self.log_concentration - self.log_rate).exp()
        kl_w = 0.5 * ((w.trace() + e_tau * w.mean.pow(2).sum(-1)) / v - d + d * math.log(v) - w.log_det())
        return (kl_w + kl_divergence(self.precision_posterior(), self._prior())).sum()

    def _per_datum(self, phi: Tensor, y: Tensor) -> Tensor:
        return self.expected_log_likelihood(phi, y)

    def predictive(self, phi: Tensor) -> Distribution:
        """``StudentT(2a, m^T phi, sqrt((b/a)(1 + phi^T S phi)))``; batch ``[N]``, event ``[O]`` when ``O > 1``."""
        phi, _ = self._check(phi)
        a, b = self.log_concentration.exp(), self.log_rate.exp()
        scale = ((b / a) * (1 + self.weights.quad(phi))).sqrt()
        dist = StudentT(2 * a.expand_as(scale), phi @ self.weights.mean.mT, scale)
        if self.out_features == 1:
            return StudentT(dist.df.squeeze(-1), dist.loc.squeeze(-1), dist.scale.squeeze(-1))
        return Independent(dist, 1)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        return LastLayerOutput(self.predictive(phi))

    @torch.no_grad()
    def solve_posterior(self, phi: Tensor, y: Tensor) -> VBLLStudentTRegression:
        """Exact normal-gamma posterior on frozen features ``phi [N, D]``, ``y [N, O]`` (closed form); returns ``self``.

        ``P = Phi^T Phi + I / s^2``, ``m = P^{-1} Phi^T y``, ``a = a_0 + N / 2``,
        ``b = b_0 + (y^T y - m^T P m) / 2``.
        """
        phi, y = self._check(phi, y)
        n, d = phi.shape
        eye = torch.eye(d, dtype=phi.dtype, device=phi.device)
        precision = phi.mT @ phi + eye / self.prior_scale**2
        tril = torch.linalg.cholesky(precision)
        mean = torch.cholesky_solve(phi.mT @ y, tril).mT  # [O, D]
        self.weights.set_posterior(mean, precision.expand(self.out_features, d, d))
        quad = y.pow(2).sum(0) - (mean * (phi.mT @ y).mT).sum(-1)  # y^T y - m^T P m, [O]
        self.log_concentration.fill_(math.log(self.prior_concentration + 0.5 * n))
        self.log_rate.copy_((self.prior_rate + 0.5 * quad).log())
        return self

    def fit(self, phi: Tensor, y: Tensor, *args, **kwargs) -> VBLLStudentTRegression:
        """Deprecated alias of `solve_posterior` (``fit`` is `vitorch.fit`'s name).

        Args and shapes as `solve_posterior`: ``phi [N, D]``, ``y [N, O]]``.

        References:
            Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
        """
        _legacy.deprecated_fit(self)
        return self.solve_posterior(phi, y, *args, **kwargs)
