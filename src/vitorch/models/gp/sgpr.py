"""Titsias' collapsed variational bound for sparse GP regression, and its optimal q(u).

With inducing inputs ``Z [M, D]``, ``K_mm = L L^T``, ``A = L^{-1} K_mn / sigma``,
``B = I + A A^T = L_B L_B^T``, ``r = y - m(X)`` and ``c = L_B^{-1} A r / sigma``:

    ELBO = log N(y; m(X), Q_nn + sigma^2 I) - tr(K_nn - Q_nn) / (2 sigma^2)
         = -N/2 log(2 pi sigma^2) - sum log diag L_B - ||r||^2 / (2 sigma^2) + ||c||^2 / 2
           - (sum_n k(x_n, x_n)) / (2 sigma^2) + ||A||_F^2 / 2,

with ``Q_nn = K_nm K_mm^{-1} K_mn``.  Only ``L`` and ``L_B`` are factored and only
triangular solves touch them, so the bound stays accurate when ``K_mm`` is close
to singular (e.g. ``Z = X`` with nearby inputs), where forming ``K_mm^{-1}`` would
not.  The optimal whitened ``q(v)``, ``u = L v``, is ``N(L_B^{-T} c, B^{-1})``
(`SGPR.optimal_q`).  Cost ``O(N M^2)``.

The bound does not split into per-datum terms (the ``log N`` term couples all of
``y``), so ``forward((X, y))`` reports ``ELBO / N`` for every datum, ``loss =
-ELBO / N``: the convention of every vitorch model (``docs/gp.md``).  Train it on
the whole data set as one batch (``vt.fit(model, (X, y), batch_size=len(X))``); a
smaller batch trains the bound of that subset.

References:
    Titsias, Variational Learning of Inducing Variables in Sparse Gaussian
    Processes (AISTATS 2009).
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor, nn

from ...families import FullRankNormal
from ...loss import LossOutput
from .kernels import Kernel
from .likelihoods import GaussianLikelihood
from .linalg import check_data, check_finite, default_jitter, jittered_cholesky, module_dtype, unpack_batch
from .means import ZeroMean

__all__ = ["SGPR", "inducing_parameter"]

_LOG_2PI = math.log(2 * math.pi)


def inducing_parameter(z: Tensor, owner: str, learn: bool = True, kernel: Kernel | None = None) -> Tensor:
    """Validate inducing inputs ``z [M, D]`` (against ``kernel``'s ARD sizes and dtype, if given)
    and wrap them as a parameter (or plain tensor).

    Raises:
        ValueError: for a shape other than ``[M, D]``, non-finite values, or ARD hyperparameters
            of ``kernel`` whose size is not ``D``.
        TypeError: if ``z`` is not floating or its dtype differs from ``kernel``'s.
    """
    z = torch.as_tensor(z)
    if z.dim() != 2 or z.shape[0] < 1:
        raise ValueError(f"{owner}: inducing inputs Z must have shape [M, D] with M >= 1; got {tuple(z.shape)}")
    if kernel is not None:
        dtype = module_dtype(kernel)
        if z.dtype != dtype:
            raise TypeError(
                f"{owner}: inducing inputs Z have dtype {z.dtype} but the kernel's parameters are {dtype}; "
                f"convert Z with .to({dtype}) (or build the kernel in {z.dtype})"
            )
        kernel.check_dims(z.shape[-1], "inducing inputs Z")
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
            (default `vitorch.models.gp.linalg.default_jitter`: 0 in float64).
        learn_inducing: make ``Z`` a trainable parameter.

    Raises:
        ValueError: for bad ``Z`` or an ARD kernel whose number of lengthscales is not ``Z``'s ``D``.
        TypeError: if ``Z``'s dtype differs from the kernel's.

    Example:
        >>> model = SGPR(RBF(), Z, noise=0.1)
        >>> vt.fit(model, (X, y), steps=300, batch_size=len(X), lr=0.05)   # loss = -ELBO / N
        >>> model.full_data_elbo(X, y)                                     # the collapsed bound, a scalar
        >>> mean, var = model.predict(X, y, X_new)                         # under the optimal q(u)

    Shapes: ``forward((X [N, D], y [N]))`` gives ``loss []`` and ``bound [N]``;
    ``full_data_elbo(X, y)`` is a scalar; ``predict(X, y, X_new [N*, D])`` gives mean and
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
        z = inducing_parameter(inducing, "SGPR", learn_inducing, kernel)
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
        check_data("SGPR", x, y, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
        sigma = self.noise.sqrt()
        l_mm = jittered_cholesky(self.kernel(self.inducing), "K_mm", jitter=self.jitter)
        a = torch.linalg.solve_triangular(l_mm, self.kernel(self.inducing, x), upper=False) / sigma  # [M, N]
        b = a @ a.mT
        b = b + torch.eye(b.shape[0], dtype=b.dtype, device=b.device)
        l_b = jittered_cholesky(b, "I + A A^T", jitter=0.0)
        r = y - self.mean(x)
        c = torch.linalg.solve_triangular(l_b, (a @ r).unsqueeze(-1) / sigma, upper=False).squeeze(-1)
        return {"l_mm": l_mm, "a": a, "l_b": l_b, "r": r, "c": c, "sigma": sigma}

    def forward(self, batch: tuple[Tensor, Tensor]) -> LossOutput:
        """The collapsed bound per datum on ``batch = (X [N, D], y [N])``, normally the whole data set.

        Returns:
            `vitorch.LossOutput` with ``bound [N]`` equal to ``ELBO / N`` in every entry and
            ``loss = -ELBO / N``, a scalar.
        """
        x, y = unpack_batch("SGPR", batch)
        per_datum = self.full_data_elbo(x, y) / x.shape[0]
        return LossOutput(-per_datum, per_datum.expand(x.shape[0]))

    def elbo(self, x: Tensor, y: Tensor) -> Tensor:
        """Deprecated name of `full_data_elbo` (a scalar for ``x [N, D]``, ``y [N]``)."""
        warnings.warn(
            "SGPR.elbo is renamed full_data_elbo; for training use model((x, y)).loss (-full_data_elbo / N)",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.full_data_elbo(x, y)

    def full_data_elbo(self, x: Tensor, y: Tensor) -> Tensor:
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
        """The optimal ``q(v)`` (whitened, ``u = L v``) or ``q(u)`` in closed form, as a
        `FullRankNormal` over ``[M]`` (Titsias, 2009): the q at which an `SVGP` with
        the same kernel, inducing inputs and noise attains this collapsed bound."""
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
        check_data("SGPR", x_new, dtype=self.inducing.dtype, width=self.inducing.shape[-1])
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
