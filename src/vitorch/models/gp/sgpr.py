"""Titsias' collapsed variational bound for sparse GP regression, and its optimal q(u).

With inducing inputs ``Z [M, D]``, ``K_mm = L L^T``, ``A = L^{-1} K_mn / sigma``,
``B = I + A A^T = L_B L_B^T``, ``r = y - m(X)`` and ``c = L_B^{-1} A r / sigma``:

    ELBO = log N(y; m(X), Q_nn + sigma^2 I) - tr(K_nn - Q_nn) / (2 sigma^2)
         = -N/2 log(2 pi sigma^2) - sum log diag L_B - ||r||^2 / (2 sigma^2) + ||c||^2 / 2
           - (sum_n k(x_n, x_n)) / (2 sigma^2) + ||A||_F^2 / 2,

with ``Q_nn = K_nm K_mm^{-1} K_mn``.  Only ``L`` and ``L_B`` are factored and only
triangular solves touch them, so the bound stays accurate when ``K_mm`` is close
to singular (e.g. ``Z = X`` with nearby inputs), where forming ``K_mm^{-1}`` would
not.  The optimal whitened ``q(v)``, ``u = L v``, is ``N(L_B^{-T} c, B^{-1})``.
Cost ``O(N M^2)``.

References:
    Titsias, Variational Learning of Inducing Variables in Sparse Gaussian
    Processes (AISTATS 2009).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ...families import FullRankNormal
from .kernels import Kernel
from .likelihoods import GaussianLikelihood
from .linalg import check_data, check_finite, default_jitter, jittered_cholesky
from .means import ZeroMean

__all__ = ["SGPR", "inducing_parameter"]

_LOG_2PI = math.log(2 * math.pi)


def inducing_parameter(z: Tensor, owner: str, learn: bool = True) -> Tensor:
    """Validate inducing inputs ``z [M, D]`` and wrap them as a parameter (or plain tensor)."""
    z = torch.as_tensor(z)
    if z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"{owner}: inducing inputs Z must have shape [M, D] with M >= 1; got {tuple(z.shape)}")
    check_finite("inducing inputs Z", z, owner)
    z = z.detach().clone()
    return nn.Parameter(z) if learn else z


class SGPR(nn.Module):
    """Sparse GP regression with Titsias' collapsed bound.

    Args:
        kernel: covariance function.
        inducing: inducing inputs ``Z [M, D]`` (copied; learnable unless ``learn_inducing=False``).
        noise: Gaussian noise variance ``sigma^2``.
        mean: prior mean module (``ZeroMean`` if None).
        jitter: base jitter on ``K_mm`` relative to its mean diagonal
            (default :func:`~vitorch.models.gp.linalg.default_jitter`: 0 in float64).
        learn_inducing: make ``Z`` a trainable parameter.

    Shapes: ``elbo(X [N, D], y [N])`` is a scalar; ``predict(X, y, X_new [N*, D])`` gives mean and
    variance ``[N*]``.

    References:
        Titsias, *Variational Learning of Inducing Variables in Sparse Gaussian Processes* (AISTATS 2009).
    """

    def __init__(
        self,
        kernel: Kernel,
        inducing: Tensor,
        noise: float | Tensor = 1.0,
        mean: nn.Module | None = None,
        jitter: float | None = None,
        learn_inducing: bool = True,
    ):
        super().__init__()
        self.kernel = kernel
        z = inducing_parameter(inducing, "SGPR", learn_inducing)
        if learn_inducing:
            self.inducing = z
        else:
            self.register_buffer("inducing", z)
        self.likelihood = GaussianLikelihood(noise)
        self.mean = mean if mean is not None else ZeroMean()
        self.jitter = default_jitter(z.dtype) if jitter is None else float(jitter)

    @property
    def noise(self) -> Tensor:
        return self.likelihood.noise

    def _terms(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        check_data("SGPR", x, y)
        sigma = self.noise.sqrt()
        l_mm = jittered_cholesky(self.kernel(self.inducing), "K_mm", jitter=self.jitter)
        a = torch.linalg.solve_triangular(l_mm, self.kernel(self.inducing, x), upper=False) / sigma  # [M, N]
        b = a @ a.mT
        b = b + torch.eye(b.shape[0], dtype=b.dtype, device=b.device)
        l_b = jittered_cholesky(b, "I + A A^T", jitter=0.0)
        r = y - self.mean(x)
        c = torch.linalg.solve_triangular(l_b, (a @ r).unsqueeze(-1) / sigma, upper=False).squeeze(-1)
        return {"l_mm": l_mm, "a": a, "l_b": l_b, "r": r, "c": c, "sigma": sigma}

    def elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """The collapsed bound (a scalar, a lower bound on ``log p(y)``) for ``x [N, D]``, ``y [N]``."""
        t = self._terms(x, y)
        n, s2 = x.shape[0], self.noise
        return (
            -0.5 * n * (_LOG_2PI + s2.log())
            - t["l_b"].diagonal().log().sum()
            - 0.5 * t["r"].pow(2).sum() / s2
            + 0.5 * t["c"].pow(2).sum()
            - 0.5 * self.kernel.diag(x).sum() / s2
            + 0.5 * t["a"].pow(2).sum()
        )

    def optimal_q(self, x: Tensor, y: Tensor, whiten: bool = True) -> FullRankNormal:
        """The optimal ``q(v)`` (whitened, ``u = L v``) or ``q(u)``, as a :class:`FullRankNormal` over ``[M]``."""
        with torch.no_grad():
            t = self._terms(x, y)
            l_b = t["l_b"]
            loc = torch.linalg.solve_triangular(l_b.mT, t["c"].unsqueeze(-1), upper=True).squeeze(-1)
            tril = jittered_cholesky(torch.cholesky_inverse(l_b), "B^{-1}", jitter=0.0)
            if not whiten:
                loc, tril = t["l_mm"] @ loc, t["l_mm"] @ tril
        return FullRankNormal(loc, tril)

    def predict(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance ``[N*]`` of the latent ``f`` at ``x_new`` under the optimal ``q(u)``."""
        check_data("SGPR", x_new)
        t = self._terms(x, y)
        a_new = torch.linalg.solve_triangular(t["l_mm"], self.kernel(self.inducing, x_new), upper=False)
        loc = torch.linalg.solve_triangular(t["l_b"].mT, t["c"].unsqueeze(-1), upper=True).squeeze(-1)
        mean = self.mean(x_new) + a_new.mT @ loc
        b_inv_half = torch.linalg.solve_triangular(t["l_b"], a_new, upper=False)
        var = self.kernel.diag(x_new) - a_new.pow(2).sum(0) + b_inv_half.pow(2).sum(0)
        return mean, var.clamp_min(0.0)

    def predict_y(self, x: Tensor, y: Tensor, x_new: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and variance of noisy ``y`` at ``x_new``."""
        return self.likelihood.predict(*self.predict(x, y, x_new))
