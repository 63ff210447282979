"""Heteroscedastic VBLL regression: a Bayesian last layer for the mean and one for the log-variance.

Model, for each output ``i``:

    y_ni ~ N(w_i^T phi_n, exp(u_i^T phi_n + c_i)),    w_i ~ N(0, s^2 I),  u_i ~ N(0, s_u^2 I),

with a point-estimated offset ``c_i``.  Under ``q(W) q(U)`` with Gaussian rows, the
log-variance ``l_ni = u_i^T phi_n + c_i`` is Gaussian with mean ``mu_ni`` and
variance ``t_ni = phi_n^T S^u_i phi_n``, so ``E exp(-l) = exp(-mu + t / 2)`` and the
expected log-likelihood is exact, with no Jensen step:

    E_q log N(y | w^T phi, e^l) = -1/2 [log 2 pi + mu + exp(-mu + t/2) ((y - m^T phi)^2 + phi^T S phi)].

``ELBO = sum_n (...) - KL(q(W) || p(W)) - KL(q(U) || p(U))``.  With ``q(U)`` collapsed
to ``u = 0`` it is the homoscedastic `VBLLRegression` objective with
``sigma^2 = exp(c)``.  The predictive integrates the log-variance by Gauss-Hermite
quadrature: a mixture of Gaussians with variances ``phi^T S phi + exp(mu + sqrt(2 t) x_j)``.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024) for the
    deterministic last-layer objective; the heteroscedastic head follows the same
    construction with a second Bayesian layer for the log-variance.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from ...kernels.vbll_regression import vbll_heteroscedastic_bound
from ...loss import LossOutput
from . import _checks, _legacy
from ._bound import DeterministicBound
from .covariance import Dense, Diagonal, WeightPosterior
from .output import LastLayerOutput

__all__ = ["VBLLHeteroscedasticRegression"]

_LOG_2PI = math.log(2 * math.pi)


class VBLLHeteroscedasticRegression(DeterministicBound, nn.Module):
    """Regression head whose noise variance is itself a Bayesian linear function of the features.

    Args:
        in_features: D.
        out_features: O.
        prior_scale: ``s``, prior standard deviation of the mean weights.
        noise_prior_scale: ``s_u``, prior standard deviation of the log-variance weights.
        noise_variance: initial ``exp(c)``.
        covariance: posterior factory for the mean weights (``Dense`` by default).
        noise_covariance: posterior factory for the log-variance weights (``Diagonal``).
        num_quadrature: Gauss-Hermite nodes of the predictive mixture.

    Shapes: ``phi [N, D]``, ``y [N, O]`` (``[N]`` when ``O = 1``); mean and log-variance
    weights ``[O, D]`` each.  State: ``weights`` (``q(W)``), ``noise_weights`` (``q(U)``)
    and the offset ``log_noise_offset [O]``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024) for the
        deterministic objective; Lázaro-Gredilla & Titsias, *Variational Heteroscedastic
        Gaussian Process Regression* (ICML 2011) for ``E_q exp(-l) = exp(-mu + t/2)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int = 1,
        prior_scale: float = 1.0,
        noise_prior_scale: float = 0.1,
        noise_variance: float = 1.0,
        *,
        covariance: Callable[..., WeightPosterior] = Dense,
        noise_covariance: Callable[..., WeightPosterior] = Diagonal,
        num_quadrature: int = 16,
    ):
        super().__init__()
        owner = type(self).__name__
        self.in_features = _checks.positive_int(owner, "in_features", in_features)
        self.out_features = _checks.positive_int(owner, "out_features", out_features)
        self.prior_scale = _checks.positive_float(owner, "prior_scale", prior_scale)
        self.noise_prior_scale = _checks.positive_float(owner, "noise_prior_scale", noise_prior_scale)
        v = _checks.positive_float(owner, "noise_variance", noise_variance)
        _checks.positive_int(owner, "num_quadrature", num_quadrature)
        self.weights = covariance(out_features, in_features, init_variance=self.prior_scale**2)
        self.noise_weights = noise_covariance(out_features, in_features, init_variance=self.noise_prior_scale**2)
        for name, w in (("covariance", self.weights), ("noise_covariance", self.noise_weights)):
            if not isinstance(w, WeightPosterior):
                raise ValueError(f"{owner}: {name} must build a WeightPosterior; got {type(w).__name__}")
        self.log_noise_offset = nn.Parameter(torch.full((out_features,), math.log(v)))
        nodes, weights = np.polynomial.hermite.hermgauss(num_quadrature)
        # E_{l ~ N(mu, t)} f(l) = sum_j w_j / sqrt(pi) f(mu + sqrt(2 t) x_j)
        self.register_buffer("_gh_nodes", torch.as_tensor(nodes, dtype=torch.get_default_dtype()))
        self.register_buffer("_gh_log_weights", torch.as_tensor(np.log(weights / math.sqrt(math.pi))))

    def _check(self, phi: Tensor, y: Tensor | None = None, values: bool = True) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _checks.features(owner, phi, self.in_features, values)
        if y is None:
            return phi, None
        y = _checks.targets(owner, y, phi.shape[0], self.out_features, values)
        return phi, y if y.dtype == phi.dtype else y.to(phi.dtype)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # state saved by vitorch <= 0.4: packed dense posteriors, the offset in q(U)'s spare entry
        converted = [prefix + k for k in ("weights.packed", "noise_weights.packed") if prefix + k in state_dict]
        _legacy.unpack_posterior(state_dict, prefix + "weights.", self.in_features)
        spare = _legacy.unpack_posterior(state_dict, prefix + "noise_weights.", self.in_features)
        if spare is not None and spare.shape[1] >= 1:
            state_dict.setdefault(prefix + "log_noise_offset", spare[:, 0].clone())
        _legacy.warn(converted)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def loss(self, phi: Tensor, y: Tensor, num_data: int) -> LossOutput:
        """The minibatch bound as a `vitorch.LossOutput`: ``bound [B]``, ``loss = -mean(bound)``.

        ``bound_n = E_q log p(y_n | phi_n, W, U) - (KL(q(W) || p(W)) + KL(q(U) || p(U))) / N``,
        what `vitorch.LossOutput.from_terms` makes of those terms, computed by
        `vitorch.kernels.vbll_heteroscedastic_bound` (the fused backend for a ``Dense``
        ``q(W)`` with a ``Diagonal`` or ``Dense`` ``q(U)``).  The training step's hot path:
        types and shapes are checked, values are not (a non-finite input gives a non-finite
        loss, which `vitorch.fit` stops on).

        Args:
            phi: ``[B, D]`` features.
            y: ``[B, O]`` (or ``[B]``) targets.
            num_data: N, the size of the training set, which weighs the KL.
        """
        phi, y = self._check(phi, y, values=False)
        _checks.num_data(type(self).__name__, num_data, phi.shape[0])
        w, u = self.weights, self.noise_weights
        bound, loss = vbll_heteroscedastic_bound(
            phi, y, w.mean, w.row_covariance(), u.mean, u.row_covariance(), self.log_noise_offset,
            self.prior_scale**2, self.noise_prior_scale**2, num_data,
        )  # fmt: skip
        return LossOutput(loss, bound)

    @property
    def offset(self) -> Tensor:
        """``[O]`` the log-variance offset ``c`` (the parameter ``log_noise_offset``)."""
        return self.log_noise_offset

    def log_variance_moments(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """Mean ``mu`` and variance ``t`` of the log noise variance under ``q(U)``, each ``[N, O]``."""
        return phi @ self.noise_weights.mean.mT + self.offset, self.noise_weights.quad(phi)

    def expected_log_likelihood(self, phi: Tensor, y: Tensor) -> Tensor:
        """``E_q log p(y_n | phi_n, W, U)`` summed over outputs, ``[N]`` (exact)."""
        phi, y = self._check(phi, y)
        return self._expected_log_likelihood(phi, y)

    def _expected_log_likelihood(self, phi: Tensor, y: Tensor) -> Tensor:
        mu, t = self.log_variance_moments(phi)
        sq = (y - phi @ self.weights.mean.mT).pow(2) + self.weights.quad(phi)
        return -0.5 * (_LOG_2PI + mu + torch.exp(-mu + 0.5 * t) * sq).sum(-1)

    def kl(self) -> Tensor:
        """``KL(q(W) || p(W)) + KL(q(U) || p(U))``, a scalar."""
        kl_w = self.weights.kl_to_isotropic(self.prior_scale**2).sum()
        return kl_w + self.noise_weights.kl_to_isotropic(self.noise_prior_scale**2).sum()

    def _per_datum(self, phi: Tensor, y: Tensor) -> Tensor:
        return self.expected_log_likelihood(phi, y)

    def predictive(self, phi: Tensor) -> Distribution:
        """Gauss-Hermite mixture over the log-variance; ``[N]`` batch, event ``[O]`` when ``O > 1``."""
        phi, _ = self._check(phi)
        mean = phi @ self.weights.mean.mT  # [N, O]
        mu, t = self.log_variance_moments(phi)
        log_var = mu.unsqueeze(-1) + (2 * t).sqrt().unsqueeze(-1) * self._gh_nodes.to(phi)  # [N, O, J]
        scale = (self.weights.quad(phi).unsqueeze(-1) + log_var.exp()).sqrt()
        mix = Categorical(logits=self._gh_log_weights.to(phi).expand_as(scale))
        dist = MixtureSameFamily(mix, Normal(mean.unsqueeze(-1).expand_as(scale), scale))
        if self.out_features == 1:
            return _squeeze_last(dist)
        return Independent(dist, 1)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        return LastLayerOutput(self.predictive(phi))


def _squeeze_last(dist: MixtureSameFamily) -> MixtureSameFamily:
    comp = dist.component_distribution
    return MixtureSameFamily(
        Categorical(logits=dist.mixture_distribution.logits.squeeze(-2)),
        Normal(comp.loc.squeeze(-2), comp.scale.squeeze(-2)),
    )
