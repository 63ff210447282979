"""Discriminative VBLL classification with the Jensen bound on the softmax (Harrison et al., 2024).

Logits ``z = W phi + eps`` with ``W [C, D]``, rows ``w_k ~ N(0, s^2 I)`` a priori,
optional logit noise ``eps ~ N(0, diag(sigma^2))`` and ``y ~ Categorical(softmax(z))``.
Under ``q(W) = prod_k N(m_k, S_k)`` each logit is Gaussian with mean ``m_k^T phi``
and variance ``v_k = phi^T S_k phi + sigma_k^2``, and Jensen's inequality on the
log-sum-exp gives a sampling-free bound

    E_q log softmax(z)_y = E z_y - E LSE(z) >= m_y^T phi - log sum_k exp(m_k^T phi + v_k / 2),

so ``ELBO = sum_n bound_n - KL(q(W) || p(W))``.  Learned logit noise has the
inverse-Wishart prior of the paper (without it the bound would shrink it to zero).
The predictive class probabilities average the softmax over the Gaussian logits.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024), Sec. 3.2.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical

from ... import estimators as _estimators
from ... import objectives as _objectives
from ...loss import LossOutput
from ...loss import loss as _vt_loss
from . import _checks, _legacy
from ._bound import DeterministicBound
from .covariance import Dense, WeightPosterior
from .output import LastLayerOutput

__all__ = ["VBLLClassification"]


class VBLLClassification(DeterministicBound, nn.Module):
    """Discriminative classification head with a Gaussian weight posterior.

    Args:
        in_features: D, the feature dimension.
        num_classes: C.
        prior_scale: ``s``, prior standard deviation of every weight.
        noise_variance: initial (or fixed) logit-noise variance ``sigma^2``; ``0``
            removes the logit noise.
        learn_noise: learn the logit-noise variances under ``IW(psi I, nu)``.
        covariance: weight-posterior factory, as in `VBLLRegression`.
        wishart_scale: ``psi``.
        wishart_dof: ``nu``.
        num_samples: logit samples averaged by the predictive.

    Example:
        >>> head = VBLLClassification(64, 10)
        >>> out = head.loss(phi, labels, num_data=len(train_set))   # LossOutput
        >>> out = head(phi); out.predictive.probs, out.ood_score

    Shapes: ``phi [N, D]``, labels ``[N]``; ``predictive`` is a ``Categorical`` with
    batch ``[N]``; ``ood_score [N]``.

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        discriminative classification and its Jensen bound on the softmax likelihood.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        prior_scale: float = 1.0,
        noise_variance: float = 1.0,
        learn_noise: bool = True,
        *,
        covariance: Callable[..., WeightPosterior] = Dense,
        wishart_scale: float = 1.0,
        wishart_dof: float = 1.0,
        num_samples: int = 64,
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
        self.num_samples = _checks.positive_int(owner, "num_samples", num_samples)
        if not (isinstance(noise_variance, (int, float)) and math.isfinite(noise_variance) and noise_variance >= 0):
            raise ValueError(f"{owner}: noise_variance must be a finite number >= 0; got {noise_variance!r}")
        if noise_variance == 0 and learn_noise:
            raise ValueError(f"{owner}: learn_noise needs a positive initial noise_variance; got 0")
        self.learn_noise = bool(learn_noise)
        # Small random means break the symmetry between classes for end-to-end training.
        self.weights = covariance(
            num_classes, in_features, init_variance=self.prior_scale**2 / in_features, init_mean_scale=in_features**-0.5
        )
        if not isinstance(self.weights, WeightPosterior):
            raise ValueError(f"{owner}: covariance must build a WeightPosterior; got {type(self.weights).__name__}")
        log_v = torch.full((num_classes,), math.log(noise_variance) if noise_variance > 0 else -math.inf)
        if self.learn_noise:
            self.log_noise_variance = nn.Parameter(log_v)
        else:
            self.register_buffer("log_noise_variance", log_v)

    @property
    def noise_variance(self) -> Tensor:
        return self.log_noise_variance.exp()

    def _check(self, phi: Tensor, y: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        owner = type(self).__name__
        _checks.features(owner, phi, self.in_features)
        return phi, None if y is None else _checks.labels(owner, y, phi.shape[0], self.num_classes)

    def logit_moments(self, phi: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of the logits under ``q``, each ``[N, C]``."""
        phi, _ = self._check(phi)
        return phi @ self.weights.mean.mT, self.weights.quad(phi) + self.noise_variance

    def bound(self, phi: Tensor, y: Tensor) -> Tensor:
        """Per-datum Jensen bound on ``E_q log p(y_n | phi_n, W)``, ``[N]``."""
        phi, y = self._check(phi, y)
        mean, var = self.logit_moments(phi)
        return mean.gather(-1, y[:, None]).squeeze(-1) - torch.logsumexp(mean + 0.5 * var, dim=-1)

    def kl(self) -> Tensor:
        """``KL(q(W) || p(W))``, a scalar."""
        return self.weights.kl_to_isotropic(self.prior_scale**2).sum()

    def noise_log_prior(self) -> Tensor:
        """``log IW`` of the diagonal logit noise up to a constant (zero when the noise is fixed)."""
        if not self.learn_noise:
            return self.log_noise_variance.new_zeros(())
        a = 0.5 * (self.wishart_dof + self.num_classes + 1)
        return -(a * self.log_noise_variance + 0.5 * self.wishart_scale / self.noise_variance).sum()

    def _per_datum(self, phi: Tensor, y: Tensor) -> Tensor:
        return self.bound(phi, y)

    def predictive_probs(self, phi: Tensor, num_samples: int | None = None) -> Tensor:
        """``E_q softmax(z)`` by ``num_samples`` logit draws, ``[N, C]``."""
        mean, var = self.logit_moments(phi)
        s = self.num_samples if num_samples is None else _checks.positive_int("predictive", "num_samples", num_samples)
        z = mean + var.sqrt() * torch.randn(s, *mean.shape, dtype=mean.dtype, device=mean.device)
        return z.softmax(-1).mean(0)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        """Predictive ``Categorical`` and the OOD score ``1 - max_k p(k | phi)``."""
        probs = self.predictive_probs(phi)
        return LastLayerOutput(Categorical(probs=probs), ood_score=1 - probs.max(-1).values)

    def mc_loss(
        self,
        phi: Tensor,
        y: Tensor,
        num_data: int,
        num_particles: int = 1,
        objective: _objectives.Objective = _objectives.elbo,
        estimator: _estimators.Estimator = _estimators.reparam,
    ) -> LossOutput:
        """The sampled bound on ``log p(y | Phi)`` through `vitorch.loss`, without Jensen's step.

        Particles are whole weight matrices drawn from ``q(vec W)``
        (`vitorch.models.last_layer.covariance.WeightPosterior.joint_distribution`),
        since the softmax couples the classes; the log-joint is ``(N/B) sum_batch
        log softmax(W phi_n)_{y_n} + log p(W)``.  Only for the noise-free head
        (``noise_variance=0``): logit noise would be a latent variable per datum.

        Returns:
            `vitorch.LossOutput` whose ``loss`` is on the scale of `loss`
            (the bound divided by N) and whose scalar ``bound`` estimates the
            full-data bound.
        """
        phi, y = self._check(phi, y)
        _checks.num_data(type(self).__name__, num_data, phi.shape[0])
        if self.learn_noise or bool((self.noise_variance > 0).any()):
            raise ValueError(
                f"{type(self).__name__}.mc_loss needs the noise-free head (noise_variance=0, learn_noise=False)"
            )
        scale = num_data / phi.shape[0]
        c, d = self.num_classes, self.in_features
        prior = torch.distributions.Normal(0.0, self.prior_scale)

        def log_joint(w: Tensor) -> Tensor:
            logits = torch.einsum("kcd,nd->knc", w.view(-1, c, d), phi)  # [K, B, C]
            log_lik = logits.log_softmax(-1).gather(-1, y.expand(len(w), -1).unsqueeze(-1)).sum((-2, -1))
            return scale * log_lik + prior.log_prob(w).sum(-1)

        out = _vt_loss(log_joint, self.weights.joint_distribution(), num_particles, objective, estimator)
        return LossOutput(loss=out.loss / num_data, bound=out.bound, log_w=out.log_w, z=out.z)

    def solve_posterior(self, phi: Tensor, y: Tensor, steps: int = 100) -> VBLLClassification:
        """The head's optimum on frozen features: L-BFGS on ``-(ELBO + log p(sigma))``; returns ``self``.

        The Jensen bound has no closed-form optimum, so ``steps`` L-BFGS iterations (strong
        Wolfe line search) optimize every parameter of the head.

        Args:
            phi: ``[N, D]`` features.
            y: ``[N]`` labels.
            steps: L-BFGS iterations at most.
        """
        phi, y = self._check(phi, y)
        opt = torch.optim.LBFGS(list(self.parameters()), max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            value = -(self.elbo(phi, y) + self.noise_log_prior()) / phi.shape[0]
            value.backward()
            return value

        opt.step(closure)
        return self

    def fit(self, phi: Tensor, y: Tensor, *args, **kwargs) -> VBLLClassification:
        """Deprecated alias of `solve_posterior` (``fit`` is `vitorch.fit`'s name).

        Args and shapes as `solve_posterior`: ``phi [N, D]``, ``y [N]``.

        References:
            Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
        """
        _legacy.deprecated_fit(self)
        return self.solve_posterior(phi, y, *args, **kwargs)
