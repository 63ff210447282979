"""Generative VBLL classification: class-conditional Gaussian features (Harrison et al., 2024).

Model: ``phi | y = k ~ N(mu_k, Sigma)`` with ``Sigma = diag(sigma^2)``, class means
``mu_k ~ N(0, s^2 I)`` a priori and class probabilities ``pi``.  Then
``p(y | phi, mu) = softmax_k(log pi_k + log N(phi | mu_k, Sigma))``.  Under
``q(mu) = prod_k N(m_k, S_k)``:

    E_q log p(y | phi, mu) >= log N(phi | m_y, Sigma) - 1/2 tr(Sigma^{-1} S_y) + log pi_y
                              - log sum_k pi_k N(phi | m_k, Sigma + S_k),

the first line exact and the second by Jensen (``E log sum <= log sum E`` and
``E_q N(phi | mu_k, Sigma) = N(phi | m_k, Sigma + S_k)``).  ``ELBO = sum_n bound_n -
KL(q(mu) || p(mu))``.  The same marginals give the predictive ``softmax_k(log pi_k +
log N(phi | m_k, Sigma + S_k))`` and a density-based OOD score ``-log sum_k pi_k
N(phi | m_k, Sigma + S_k)``.

Post hoc, `VBLLGenerativeClassification.solve_posterior` maximizes the *joint* feature
ELBO ``E_q log p(Phi | y, mu) - KL + log p(Sigma)`` by closed-form coordinate ascent
(a Bayesian linear discriminant analysis), which is the conjugate counterpart of
training the conditional bound end to end.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.3.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, MultivariateNormal

from . import _checks, _legacy
from ._bound import DeterministicBound
from .covariance import Diagonal, WeightPosterior
from .output import LastLayerOutput

__all__ = ["VBLLGenerativeClassification"]

_LOG_2PI = math.log(2 * math.pi)


class VBLLGenerativeClassification(DeterministicBound, nn.Module):
    """Generative classification head with Gaussian class means and diagonal feature noise.

    Args:
        in_features: D, the feature dimension.
        num_classes: C.
        prior_scale: ``s``, prior standard deviation of each class-mean coordinate.
        noise_variance: initial (or fixed) feature-noise variance ``sigma^2``.
        learn_noise: learn ``Sigma`` under ``IW(psi I, nu)``.
        covariance: posterior factory for the class means (``Diagonal`` by default;
            any `WeightPosterior` works).
        wishart_scale: ``psi``.
        wishart_dof: ``nu``.

    Shapes: ``phi [N, D]``, labels ``[N]``; class means ``[C, D]``; ``predictive`` is a
    ``Categorical`` with batch ``[N]``; ``ood_score [N]`` (the feature density).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        generative classification.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        prior_scale: float = 1.0,
        noise_variance: float = 1.0,
        learn_noise: bool = True,
        *,
        covariance: Callable[..., WeightPosterior] = Diagonal,
        wishart_scale: float = 1.0,
        wishart_dof: float = 1.0,
    ):
        super().__init__()
        owner = type(self).__name__
        self.in_features = _checks.positive_int(owner, "in_features", in_features)
        self.num_classes = _checks.positive_int(owner, "num_classes", num_classes)
        if num_classes < 2:
            raise ValueError(f"{owner}: num_classes must be at least 2; got {num_classes}")
        self.prior_scale = _checks.positive_float(owner, "prior_scale", prior_scale)
        self.wishart_scale = _checks.positive_float(owner, "wishart_scale", wishart_scale)
        self.wishart_dof = _checks.positive_float(owner, "wishart_dof", wishart_dof)
        v = _checks.positive_float(owner, "noise_variance", noise_variance)
        self.learn_noise = bool(learn_noise)
        self.means = covariance(num_classes, in_features, init_variance=0.01 * v, init_mean_scale=0.1 * math.sqrt(v))
        if not isinstance(self.means, WeightPosterior):
            raise ValueError(f"{owner}: covariance must build a WeightPosterior; got {type(self.means).__name__}")
        log_v = torch.full((in_features,), math.log(v))
        if self.learn_noise:
            self.log_noise_variance = nn.Parameter(log_v)
        else:
            self.register_buffer("log_noise_variance", log_v)
        self.register_buffer("log_class_prior", torch.full((num_classes,), -math.log(num_classes)))

    @property
    def noise_variance(self) -> Tensor:
        """``[D]`` diagonal of ``Sigma``."""
        return self.log_noise_variance.exp()

    def _check(self, phi: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _checks.features(owner, phi, self.in_features)
        return phi, None if y is None else _checks.labels(owner, y, phi.shape[0], self.num_classes)

    def class_log_likelihoods(self, phi: Tensor) -> Tensor:
        """``log N(phi_n | m_k, Sigma + S_k)``, ``[N, C]``."""
        phi, _ = self._check(phi)
        if self.means.is_diagonal:  # diagonal marginals: no factorization needed
            var = self.means.diagonal() + self.noise_variance  # [C, D]
            maha = (phi.unsqueeze(-2) - self.means.mean).pow(2) / var  # [N, C, D]
            return -0.5 * (maha.sum(-1) + var.log().sum(-1) + self.in_features * _LOG_2PI)
        cov = self.means.covariance() + torch.diag_embed(self.noise_variance)
        return MultivariateNormal(self.means.mean, cov).log_prob(phi.unsqueeze(-2))

    def joint_logits(self, phi: Tensor) -> Tensor:
        """``log pi_k + log N(phi | m_k, Sigma + S_k)``, ``[N, C]``: the predictive's logits."""
        return self.class_log_likelihoods(phi) + self.log_class_prior

    def _expected_feature_log_lik(self, phi: Tensor, y: Tensor) -> Tensor:
        """``E_q log N(phi_n | mu_{y_n}, Sigma)``, ``[N]``."""
        var = self.noise_variance
        resid = phi - self.means.mean[y]
        trace = (self.means.diagonal()[y] / var).sum(-1)
        maha = (resid.pow(2) / var).sum(-1)
        return -0.5 * (maha + trace + self.log_noise_variance.sum() + self.in_features * _LOG_2PI)

    def bound(self, phi: Tensor, y: Tensor) -> Tensor:
        """Per-datum Jensen bound on ``E_q log p(y_n | phi_n, mu)``, ``[N]``."""
        phi, y = self._check(phi, y)
        log_norm = torch.logsumexp(self.joint_logits(phi), dim=-1)
        return self._expected_feature_log_lik(phi, y) + self.log_class_prior[y] - log_norm

    def kl(self) -> Tensor:
        return self.means.kl_to_isotropic(self.prior_scale**2).sum()

    def noise_log_prior(self) -> Tensor:
        """``log IW`` of the diagonal feature noise up to a constant (zero when fixed)."""
        if not self.learn_noise:
            return self.log_noise_variance.new_zeros(())
        a = 0.5 * (self.wishart_dof + self.in_features + 1)
        return -(a * self.log_noise_variance + 0.5 * self.wishart_scale / self.noise_variance).sum()

    def _per_datum(self, phi: Tensor, y: Tensor) -> Tensor:
        return self.bound(phi, y)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        """Predictive ``Categorical`` and the OOD score ``-log p(phi)`` (negative feature log-density)."""
        logits = self.joint_logits(phi)
        return LastLayerOutput(Categorical(logits=logits), ood_score=-torch.logsumexp(logits, dim=-1))

    @torch.no_grad()
    def solve_posterior(
        self, phi: Tensor, y: Tensor, max_iters: int = 200, tol: float = 1e-10
    ) -> VBLLGenerativeClassification:
        """Closed-form ``q(mu)``, ``Sigma`` and class frequencies on frozen features ``phi [N, D]``, labels ``[N]``.

        Returns ``self``.

        Given ``Sigma`` the class-mean posteriors are exact: precision ``n_k / sigma^2 +
        1 / s^2`` per coordinate and mean ``(sum_{n in k} phi_n / sigma^2) / precision``.
        Given ``q``, ``sigma_d^2 = (sum_n [(phi_nd - m_{y_n d})^2 + S_{y_n, dd}] + psi) /
        (N + nu + D + 1)``.  Class frequencies get add-one smoothing.
        """
        phi, y = self._check(phi, y)
        onehot = torch.nn.functional.one_hot(y, self.num_classes).to(phi.dtype)  # [N, C]
        counts = onehot.sum(0)  # [C]
        sums = onehot.mT @ phi  # [C, D]
        self.log_class_prior.copy_(((counts + 1) / (counts.sum() + self.num_classes)).log())
        for _ in range(max_iters if self.learn_noise else 1):
            prec = counts[:, None] / self.noise_variance + self.prior_scale**-2  # [C, D]
            mean = sums / self.noise_variance / prec
            self.means.set_posterior(mean, torch.diag_embed(prec))
            if not self.learn_noise:
                break
            old = self.log_noise_variance.clone()
            resid = (phi - self.means.mean[y]).pow(2) + self.means.diagonal()[y]
            n = phi.shape[0]
            var = (resid.sum(0) + self.wishart_scale) / (n + self.wishart_dof + self.in_features + 1)
            self.log_noise_variance.copy_(var.log())
            if bool(((self.log_noise_variance - old).abs() < tol).all()):
                break
        return self

    def fit(self, phi: Tensor, y: Tensor, *args, **kwargs) -> VBLLGenerativeClassification:
        """Deprecated alias of `solve_posterior` (``fit`` is `vitorch.fit`'s name).

        Args and shapes as `solve_posterior`: ``phi [N, D]``, ``y [N]``.

        References:
            Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
        """
        _legacy.deprecated_fit(self)
        return self.solve_posterior(phi, y, *args, **kwargs)
