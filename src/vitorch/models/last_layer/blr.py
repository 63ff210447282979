"""Exact Bayesian linear regression: the oracle the variational last layers are tested against.

Model, for features ``phi_n [D]`` and targets ``y_n [O]`` (or scalars):

    w_i ~ N(0, s^2 I),    y_ni | w_i ~ N(w_i^T phi_n, sigma^2),

with prior scale ``s`` and noise variance ``sigma^2`` shared by the O outputs.  The
posterior of each row is ``N(m_i, P^{-1})`` with precision ``P = Phi^T Phi / sigma^2 +
I / s^2`` and mean ``m_i = P^{-1} Phi^T y_i / sigma^2``; the evidence is

    log p(y_i) = -1/2 [N log 2 pi + N log sigma^2 + D log s^2 + log|P|
                       + y_i^T y_i / sigma^2 - m_i^T P m_i],

computed with one ``D x D`` Cholesky factor (Bishop, *PRML*, Sec. 3.5).  Type-II
maximum likelihood tunes ``s`` and ``sigma`` by MacKay's fixed point (the effective
number of parameters ``gamma``).

References:
    MacKay, *Bayesian Interpolation* (1992); Bishop, *Pattern Recognition and Machine
    Learning* (2006), Sec. 3.3-3.5; Harrison, Willes & Snoek, *Variational Bayesian
    Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from . import _checks, _legacy
from .output import LastLayerOutput

__all__ = ["BayesianLinearRegression"]

_LOG_2PI = math.log(2 * math.pi)


class BayesianLinearRegression(nn.Module):
    """Conjugate Bayesian linear regression with exact posterior, predictive and evidence.

    Args:
        in_features: D, the feature dimension.
        prior_scale: ``s``, the prior standard deviation of every weight.
        noise_variance: ``sigma^2``, the observation noise variance.

    Example:
        >>> blr = BayesianLinearRegression(3, prior_scale=1.0, noise_variance=0.5)
        >>> blr.solve_posterior(phi, y)     # phi [N, 3], y [N]
        >>> blr.log_evidence(phi, y)        # scalar
        >>> blr(phi_test).predictive        # Normal, batch [N_test]

    References:
        Bishop, *Pattern Recognition and Machine Learning* (2006), Sec. 3.3 (posterior and
        predictive) and 3.5 (evidence, and the fixed-point tuning of ``s`` and ``sigma^2``);
        MacKay, *Bayesian Interpolation* (Neural Computation, 1992).
    """

    def __init__(self, in_features: int, prior_scale: float = 1.0, noise_variance: float = 1.0):
        super().__init__()
        self.in_features = _checks.positive_int("BayesianLinearRegression", "in_features", in_features)
        s = _checks.positive_float("BayesianLinearRegression", "prior_scale", prior_scale)
        v = _checks.positive_float("BayesianLinearRegression", "noise_variance", noise_variance)
        self.register_buffer("log_prior_scale", torch.tensor(math.log(s)))
        self.register_buffer("log_noise_variance", torch.tensor(math.log(v)))
        # Empty until solve_posterior; buffers, so that a fitted model round-trips through state_dict.
        self.register_buffer("posterior_mean", torch.zeros(0))  # [D, O] after solve_posterior
        self.register_buffer("posterior_precision_tril", torch.zeros(0))  # [D, D] after solve_posterior
        self.register_buffer("scalar_targets", torch.tensor(True))  # y was [N], not [N, O]

    @property
    def prior_scale(self) -> Tensor:
        return self.log_prior_scale.exp()

    @property
    def noise_variance(self) -> Tensor:
        return self.log_noise_variance.exp()

    def _prepare(self, phi: Tensor, y: Tensor) -> tuple[Tensor, Tensor, bool]:
        _checks.features("BayesianLinearRegression", phi, self.in_features)
        scalar = isinstance(y, Tensor) and y.dim() == 1
        out = y.shape[-1] if isinstance(y, Tensor) and y.dim() == 2 else 1
        y2 = _checks.targets("BayesianLinearRegression", y, phi.shape[0], out)
        return phi, y2.to(phi.dtype), scalar

    def _solve(self, phi: Tensor, y: Tensor, log_s: Tensor, log_v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Posterior ``(mean [D, O], precision Cholesky [D, D], b = Phi^T y / sigma^2 [D, O])``."""
        eye = torch.eye(self.in_features, dtype=phi.dtype, device=phi.device)
        precision = phi.mT @ phi / log_v.exp() + eye * (-2 * log_s).exp()
        tril = torch.linalg.cholesky(precision)
        b = phi.mT @ y / log_v.exp()
        return torch.cholesky_solve(b, tril), tril, b

    def solve_posterior(self, phi: Tensor, y: Tensor) -> BayesianLinearRegression:
        """Compute the exact posterior from ``phi [N, D]`` and ``y [N]`` or ``[N, O]``; returns ``self``."""
        phi, y, scalar = self._prepare(phi, y)
        mean, tril, _ = self._solve(phi, y, self.log_prior_scale.to(phi), self.log_noise_variance.to(phi))
        self.posterior_mean, self.posterior_precision_tril = mean, tril
        self.scalar_targets = torch.tensor(scalar)
        return self

    def fit(self, phi: Tensor, y: Tensor) -> BayesianLinearRegression:
        """Deprecated alias of `solve_posterior` (``fit`` is `vitorch.fit`'s name).

        Args and shapes as `solve_posterior`: ``phi [N, D]``, ``y [N]`` or ``[N, O]``.

        References:
            Bishop, *Pattern Recognition and Machine Learning* (2006), Sec. 3.3.
        """
        _legacy.deprecated_fit(self)
        return self.solve_posterior(phi, y)

    def _evidence(self, phi: Tensor, y: Tensor, log_s: Tensor, log_v: Tensor) -> Tensor:
        n, d = phi.shape
        mean, tril, b = self._solve(phi, y, log_s, log_v)
        log_det_p = 2 * tril.diagonal().log().sum()
        quad = y.pow(2).sum(0) / log_v.exp() - (mean * b).sum(0)  # [O]
        per_output = -0.5 * (n * _LOG_2PI + n * log_v + 2 * d * log_s + log_det_p + quad)
        return per_output.sum()

    def log_evidence(self, phi: Tensor, y: Tensor) -> Tensor:
        """``log p(y | Phi)`` summed over outputs (a scalar), differentiable in the hyperparameters."""
        phi, y, _ = self._prepare(phi, y)
        return self._evidence(phi, y, self.log_prior_scale.to(phi), self.log_noise_variance.to(phi))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # The posterior buffers are empty before solve_posterior; take the saved shapes.
        for name in ("posterior_mean", "posterior_precision_tril"):
            saved = state_dict.get(prefix + name)
            if isinstance(saved, Tensor):
                setattr(self, name, torch.empty_like(saved))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def posterior_covariance(self) -> Tensor:
        """``P^{-1}``, ``[D, D]`` (shared by the outputs)."""
        self._require_fit()
        return torch.cholesky_inverse(self.posterior_precision_tril)

    def _require_fit(self) -> None:
        if self.posterior_mean.numel() == 0:
            raise ValueError("BayesianLinearRegression: call solve_posterior(phi, y) before asking for the posterior")

    def predictive(self, phi: Tensor) -> Distribution:
        """``p(y* | phi*, data) = N(m^T phi*, phi*^T P^{-1} phi* + sigma^2)``.

        Returns a ``Normal`` with batch ``[N]`` for scalar targets, else an
        ``Independent(Normal)`` with batch ``[N]`` and event ``[O]``.
        """
        self._require_fit()
        _checks.features("BayesianLinearRegression", phi, self.in_features)
        mean = phi @ self.posterior_mean  # [N, O]
        u = torch.linalg.solve_triangular(self.posterior_precision_tril, phi.mT, upper=False)
        var = u.pow(2).sum(0).unsqueeze(-1) + self.noise_variance.to(phi)  # [N, 1]
        if bool(self.scalar_targets):
            return Normal(mean.squeeze(-1), var.squeeze(-1).sqrt())
        return Independent(Normal(mean, var.sqrt().expand_as(mean)), 1)

    def forward(self, phi: Tensor) -> LastLayerOutput:
        return LastLayerOutput(self.predictive(phi))

    def tune(self, phi: Tensor, y: Tensor, max_iters: int = 500, tol: float = 1e-10) -> BayesianLinearRegression:
        """Type-II maximum likelihood of ``prior_scale`` and ``noise_variance``, then `solve_posterior`.

        MacKay's fixed point with ``alpha = 1 / s^2`` and ``beta = 1 / sigma^2``: with
        ``lambda_j`` the eigenvalues of ``beta Phi^T Phi`` and ``gamma = sum_j lambda_j /
        (lambda_j + alpha)``, iterate ``alpha = O gamma / ||M||_F^2`` and ``beta = O (N -
        gamma) / ||Y - Phi M||_F^2``.  Its fixed points are the stationary points of
        the evidence.

        Args:
            phi: ``[N, D]`` features.
            y: ``[N]`` or ``[N, O]`` targets.
            max_iters: fixed-point iterations at most.
            tol: stop when both log-hyperparameters move less than this.
        """
        phi, y2, _ = self._prepare(phi, y)
        n, o = y2.shape
        eig = torch.linalg.eigvalsh(phi.mT @ phi).clamp_min(0)
        log_s, log_v = self.log_prior_scale.to(phi), self.log_noise_variance.to(phi)
        for _ in range(max_iters):
            mean, _, _ = self._solve(phi, y2, log_s, log_v)
            lam = eig / log_v.exp()
            gamma = (lam / (lam + (-2 * log_s).exp())).sum()
            resid = (y2 - phi @ mean).pow(2).sum()
            new_s = 0.5 * (mean.pow(2).sum().log() - (o * gamma).log())
            new_v = resid.log() - (o * (n - gamma)).log()
            done = bool((new_s - log_s).abs() < tol) and bool((new_v - log_v).abs() < tol)
            log_s, log_v = new_s, new_v
            if done:
                break
        if not (torch.isfinite(log_s) and torch.isfinite(log_v)):
            raise ValueError("BayesianLinearRegression.tune: the evidence has no finite maximizer for these data")
        self.log_prior_scale.copy_(log_s)
        self.log_noise_variance.copy_(log_v)
        return self.solve_posterior(phi, y)
