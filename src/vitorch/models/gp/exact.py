"""Exact Gaussian-process regression: the reference every sparse model is tested against.

With ``K = k(X, X) + sigma^2 I = L L^T`` and ``r = y - m(X)``,

    log p(y) = -1/2 ||L^{-1} r||^2 - sum_i log L_ii - N/2 log 2 pi,

and the predictive at ``X*`` is ``mean = m(X*) + A^T L^{-1} r``,
``cov = k(X*, X*) - A^T A`` with ``A = L^{-1} k(X, X*)``.  One Cholesky, triangular
solves only; ``O(N^3)`` time and ``O(N^2)`` memory.

``forward((X, y))`` reports ``log p(y) / N`` for every datum and ``loss =
-log p(y) / N``, the convention of every vitorch model (``docs/gp.md``); train on
the whole data set as one batch.

References:
    Rasmussen & Williams, Gaussian Processes for Machine Learning (2006), alg. 2.1.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...loss import LossOutput
from .kernels import Kernel
from .likelihoods import GaussianLikelihood
from .linalg import check_data, jittered_cholesky, module_dtype, unpack_batch
from .means import ZeroMean

__all__ = ["ExactGP"]

_LOG_2PI = math.log(2 * math.pi)


class ExactGP(nn.Module):
    """GP regression with a Gaussian likelihood, by Cholesky.

    Args:
        kernel: covariance function.
        noise: observation noise variance ``sigma^2`` (positive, learnable).
        mean: prior mean module (``ZeroMean`` if None).
        jitter: base jitter relative to the mean diagonal of ``K`` (0: none unless the
            Cholesky fails, then escalated with a warning).

    Example:
        >>> gp_model = ExactGP(RBF(lengthscale=0.5), noise=0.1)
        >>> gp_model.log_marginal_likelihood(X, y)     # scalar
        >>> vt.fit(gp_model, (X, y), steps=200, batch_size=len(X), lr=0.05)   # loss = -log p(y) / N
        >>> mean, var = gp_model.predict(X, y, X_new)   # [N*], [N*]

    Shapes: inputs ``X [N, D]``, targets ``y [N]``, test inputs ``X_new [N*, D]``;
    ``forward((X, y))`` gives ``loss []`` and ``bound [N]``.

    References:
        Rasmussen & Williams, *Gaussian Processes for Machine Learning* (MIT Press, 2006),
        Algorithm 2.1 (Cholesky-based predictive and log marginal likelihood).
    """

    def __init__(self, kernel: Kernel, noise: float | Tensor = 1.0, mean: nn.Module | None = None, jitter: float = 0.0):
        super().__init__()
        self.kernel = kernel
        self.likelihood = GaussianLikelihood(noise)
        self.mean = mean if mean is not None else ZeroMean()
        self.jitter = float(jitter)

    @property
    def noise(self) -> Tensor:
        return self.likelihood.noise

    def _factor(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """``L`` of ``K + sigma^2 I`` and ``alpha = L^{-1} (y - m(X))``."""
        check_data("ExactGP", x, y, dtype=module_dtype(self))
        k = self.kernel(x)
        k = k + self.noise * torch.eye(x.shape[0], dtype=k.dtype, device=k.device)
        tril = jittered_cholesky(k, "K_nn + noise I", jitter=self.jitter)
        alpha = torch.linalg.solve_triangular(tril, (y - self.mean(x)).unsqueeze(-1), upper=False)
        return tril, alpha.squeeze(-1)

    def log_marginal_likelihood(self, x: Tensor, y: Tensor) -> Tensor:
        """``log N(y; m(X), K + sigma^2 I)`` for ``x [N, D]``, ``y [N]``; a scalar."""
        tril, alpha = self._factor(x, y)
        n = x.shape[0]
        return -0.5 * alpha.pow(2).sum() - tril.diagonal().log().sum() - 0.5 * n * _LOG_2PI

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """The log marginal likelihood per datum on ``batch = (X [N, D], y [N])``, the whole data set.

        Returns:
            `vitorch.LossOutput` with ``bound [N]`` equal to ``log p(y) / N`` in every entry
            (exact, so the bound is tight) and ``loss = -log p(y) / N``, a scalar.
        """
        x, y = unpack_batch("ExactGP", batch)
        per_datum = self.log_marginal_likelihood(x, y) / x.shape[0]
        return LossOutput(-per_datum, per_datum.expand(x.shape[0]))

    def predict(self, x: Tensor, y: Tensor, x_new: Tensor, full_cov: bool = False) -> tuple[Tensor, Tensor]:
        """Posterior of the latent ``f`` at ``x_new [N*, D]`` given data ``(x, y)``.

        Returns:
            ``mean [N*]`` and ``var [N*]`` (or ``cov [N*, N*]`` when ``full_cov``).
        """
        check_data("ExactGP", x_new, dtype=module_dtype(self))
        tril, alpha = self._factor(x, y)
        a = torch.linalg.solve_triangular(tril, self.kernel(x, x_new), upper=False)  # [N, N*]
        mean = self.mean(x_new) + a.mT @ alpha
        if full_cov:
            return mean, self.kernel(x_new) - a.mT @ a
        return mean, (self.kernel.diag(x_new) - a.pow(2).sum(0)).clamp_min(0.0)

    def predict_y(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of noisy ``y`` at ``x_new``, each ``[N*]``."""
        mean, var = self.predict(x, y, x_new)
        return self.likelihood.predict(mean, var)
