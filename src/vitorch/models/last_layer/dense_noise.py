"""VBLL regression with a dense (correlated) noise covariance across outputs.

As `vitorch.models.last_layer.VBLLRegression`, but ``eps ~ N(0, Sigma)`` with a
full ``Sigma = L L^T`` (Harrison et al., 2024, Sec. 3.1, the multi-output case).  With
``q(W) = prod_i N(m_i, S_i)`` and ``Lambda = Sigma^{-1}``,

    E_q log N(y | W phi, Sigma) = log N(y | M phi, Sigma) - 1/2 sum_i Lambda_ii phi^T S_i phi,

because ``Cov_q(W phi) = diag(phi^T S_i phi)``.  The learned ``Sigma`` has the
inverse-Wishart log-prior ``-(nu + O + 1)/2 log|Sigma| - psi/2 tr(Sigma^{-1})``.  With
correlated noise the exact posterior couples the rows, so the row-independent family
no longer contains it: the ELBO is then strictly below the evidence, and equal to it
when ``Sigma`` is diagonal.

References:
    Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, MultivariateNormal, Normal

from ... import estimators as _estimators
from ... import objectives as _objectives
from ...kernels.vbll_regression.reference import bound_and_loss
from ...loss import LossOutput
from ...loss import loss as _vt_loss
from . import _checks
from .regression import VBLLRegression

__all__ = ["VBLLDenseNoiseRegression"]

_LOG_2PI = math.log(2 * math.pi)


class VBLLDenseNoiseRegression(VBLLRegression):
    """Multi-output VBLL regression whose noise covariance is a dense matrix.

    Takes the arguments of `VBLLRegression`; ``noise_variance`` sets the initial
    (or fixed) ``Sigma = noise_variance * I``.  The noise Cholesky factor is stored in
    one ``[O, O]`` tensor ``noise_raw``: strict lower triangle, log-diagonal.

    Shapes: ``phi [N, D]``, ``y [N, O]``; the predictive is a ``MultivariateNormal`` with
    batch ``[N]`` and event ``[O]`` (a ``Normal`` with batch ``[N]`` when ``O = 1``).

    References:
        Harrison, Willes & Snoek, *Variational Bayesian Last Layers* (ICLR 2024):
        regression with a full noise covariance and its Wishart regularizer.
    """

    def _init_noise(self, log_v: Tensor) -> None:
        raw = torch.diag_embed(0.5 * log_v)
        if self.learn_noise:
            self.noise_raw = nn.Parameter(raw)
        else:
            self.register_buffer("noise_raw", raw)

    def noise_scale_tril(self) -> Tensor:
        """``L`` with ``Sigma = L L^T``, ``[O, O]``."""
        return self.noise_raw.tril(-1) + torch.diag_embed(self.noise_raw.diagonal().exp())

    def noise_covariance(self) -> Tensor:
        tril = self.noise_scale_tril()
        return tril @ tril.mT

    @property
    def noise_variance(self) -> Tensor:
        """``[O]`` the diagonal of ``Sigma``."""
        return self.noise_scale_tril().pow(2).sum(-1)

    @property
    def log_noise_variance(self) -> Tensor:
        """``[O]`` the log of the diagonal of ``Sigma`` (derived from ``noise_raw``)."""
        return self.noise_variance.log()

    def _noise_parameter(self) -> Tensor:
        return self.noise_raw

    def _tune(self, phi: Tensor, y: Tensor, max_iters: int, tol: float) -> None:
        raise ValueError(
            "VBLLDenseNoiseRegression: solve_posterior(tune=True) tunes a diagonal noise; use VBLLRegression, "
            "or solve_posterior with tune=False (the dense noise is then learned by its closed-form update)"
        )

    def log_evidence(self, phi: Tensor, y: Tensor) -> Tensor:
        raise ValueError("VBLLDenseNoiseRegression: log_evidence is implemented for a diagonal noise only")

    def _noise_parts(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(L, diag(Sigma^{-1}) [O], log|Sigma|)``."""
        tril = self.noise_scale_tril()
        eye = torch.eye(self.out_features, dtype=tril.dtype, device=tril.device)
        inv = torch.linalg.solve_triangular(tril, eye, upper=False)
        return tril, inv.pow(2).sum(0), 2 * self.noise_raw.diagonal().sum()

    def _bound(self, phi: Tensor, y: Tensor, num_data: int, noise_prior: bool) -> tuple[Tensor, Tensor]:
        """``(bound [B], loss [])`` with the dense ``Sigma``: ``E_q log N(y_n | W phi_n, Sigma) - penalty / N``,
        ``penalty = KL(q(W) || p(W))`` minus ``log p(Sigma)`` with ``noise_prior`` and a learned noise."""
        tril, prec_diag, log_det = self._noise_parts()
        resid = y - phi @ self.weights.mean.mT  # [N, O]
        u = torch.linalg.solve_triangular(tril, resid.mT, upper=False)  # [O, N]
        quad, trace = self.weights.quad_and_trace(phi)
        expected = -0.5 * (u.pow(2).sum(0) + quad @ prec_diag + log_det + self.out_features * _LOG_2PI)
        kl = self.weights.kl_to_isotropic(self.prior_scale**2, trace).sum()
        return bound_and_loss(expected, kl - self.noise_log_prior() if noise_prior else kl, num_data)

    def noise_log_prior(self) -> Tensor:
        """``log IW(Sigma | psi I, nu)`` up to a constant: ``-(nu+O+1)/2 log|Sigma| - psi/2 tr(Sigma^{-1})``."""
        if not self.learn_noise:
            return self.noise_raw.new_zeros(())
        _, prec_diag, log_det = self._noise_parts()
        a = 0.5 * (self.wishart_dof + self.out_features + 1)
        return -(a * log_det + 0.5 * self.wishart_scale * prec_diag.sum())

    def predictive(self, phi: Tensor) -> Distribution:
        """``N(M phi, Sigma + diag(phi^T S_i phi))``: ``Normal [N]`` if ``O = 1``, else ``MultivariateNormal``."""
        phi, _ = self._check(phi)
        mean = phi @ self.weights.mean.mT
        cov = self.noise_covariance() + torch.diag_embed(self.weights.quad(phi))  # [N, O, O]
        if self.out_features == 1:
            return Normal(mean.squeeze(-1), cov.reshape(-1).sqrt())
        return MultivariateNormal(mean, covariance_matrix=cov)

    @torch.no_grad()
    def _closed_form_step(self, phi: Tensor, y: Tensor) -> None:
        """Optimal q(W) given Sigma: ``S_i = (Lambda_ii Phi^T Phi + I/s^2)^{-1}``; the means solve
        ``Lambda M A + M / s^2 = Lambda Y^T Phi`` (``A = Phi^T Phi``), one ``OD x OD`` system."""
        o, d = self.out_features, self.in_features
        tril, prec_diag, _ = self._noise_parts()
        lam = torch.cholesky_inverse(tril)
        gram = phi.mT @ phi
        eye_d = torch.eye(d, dtype=phi.dtype, device=phi.device)
        prior_var = self.prior_scale**2
        precision = gram * prec_diag[:, None, None] + eye_d / prior_var  # [O, D, D]
        eye_od = torch.eye(o * d, dtype=phi.dtype, device=phi.device)
        system = torch.kron(lam.contiguous(), gram.contiguous()) + eye_od / prior_var
        rhs = (lam @ y.mT @ phi).reshape(-1, 1)
        mean = torch.cholesky_solve(rhs, torch.linalg.cholesky(system)).reshape(o, d)
        self.weights.set_posterior(mean, precision)

    @torch.no_grad()
    def _noise_step(self, phi: Tensor, y: Tensor) -> None:
        """Optimal Sigma given q: ``(R^T R + diag(sum_n phi_n^T S_i phi_n) + psi I) / (N + nu + O + 1)``."""
        resid = y - phi @ self.weights.mean.mT
        scatter = resid.mT @ resid + torch.diag_embed(self.weights.quad(phi).sum(0))
        scatter = scatter + self.wishart_scale * torch.eye(self.out_features, dtype=phi.dtype, device=phi.device)
        tril = torch.linalg.cholesky(scatter / (phi.shape[0] + self.wishart_dof + self.out_features + 1))
        self.noise_raw.copy_(tril.tril(-1))
        self.noise_raw.diagonal().copy_(tril.diagonal().log())

    def mc_loss(
        self,
        phi: Tensor,
        y: Tensor,
        num_data: int,
        num_particles: int = 1,
        objective: _objectives.Objective = _objectives.elbo,
        estimator: _estimators.Estimator = _estimators.reparam,
    ) -> LossOutput:
        """Sampled bound through `vitorch.loss`; the noise couples the rows, so particles are
        whole matrices from ``q(vec W)`` and ``bound`` is a scalar."""
        phi, y = self._check(phi, y)
        _checks.num_data(type(self).__name__, num_data, phi.shape[0])
        scale = num_data / phi.shape[0]
        o, d = self.out_features, self.in_features
        noise = MultivariateNormal(torch.zeros_like(self.noise_raw[0]), scale_tril=self.noise_scale_tril())

        def log_joint(w: Tensor) -> Tensor:
            pred = torch.einsum("kod,nd->kno", w.view(-1, o, d), phi)  # [K, B, O]
            log_prior = Normal(0.0, self.prior_scale).log_prob(w).sum(-1)
            return scale * noise.log_prob(y - pred).sum(-1) + log_prior

        out = _vt_loss(log_joint, self.weights.joint_distribution(), num_particles, objective, estimator)
        return LossOutput(
            loss=(out.loss - self.noise_log_prior()) / num_data, bound=out.bound, log_w=out.log_w, z=out.z
        )
