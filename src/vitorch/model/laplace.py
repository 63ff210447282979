"""The Laplace guide: a Gaussian at the mode of the unconstrained density, with the inverse Hessian as covariance.

The cheapest baseline: no stochastic optimization, one mode search and one Hessian.
It is exact for a Gaussian target and a good start (or a sanity check) elsewhere;
where the posterior is skewed on the unconstrained scale a variational guide does better.

References:
    Tierney & Kadane, *Accurate Approximations for Posterior Moments and Marginal
    Densities* (JASA 1986).
    MacKay, *Information Theory, Inference, and Learning Algorithms* (2003), ch. 27.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..families import FullRankNormal
from .guides import AutoGuide
from .mode import find_map, neg_hessian
from .model import Model

__all__ = ["AutoLaplace"]


class AutoLaplace(AutoGuide):
    """``N(z*, H^{-1})`` with ``z*`` the mode of ``model.log_density`` and ``H = -grad^2 log_density(z*)``.

    The fit runs on the first call (or explicitly with `fit`); the result is a
    `vitorch.FullRankNormal` with batch shape ``()`` and event ``[D]`` whose
    parameters are buffers (``loc [D]``, ``scale_tril [D, D]``), so it has no
    trainable parameters and ``state_dict`` round-trips the fitted approximation.

    Args:
        model: the model.
        kind: ``"laplace"`` or ``None``.
        method: ``"lbfgs"`` (default) or ``"adam"``, passed to `vitorch.model.find_map`.
        steps: iterations of that optimizer (its default if ``None``).
        **options: ``init_loc`` (the mode search's start), ``dtype``; see `AutoGuide`.

    Raises:
        ValueError: (at the fit) if the Hessian at the mode is not positive definite:
            the optimizer stopped short of a mode, or the density is improper there.

    References:
        Tierney & Kadane (JASA 1986); MacKay (2003), ch. 27.
    """

    kind = "laplace"
    default_lr = None  # fitted by a mode search, not by gradient steps on a bound

    def __init__(
        self, model: Model, kind: str | None = None, *, method: str = "lbfgs", steps: int | None = None, **options
    ):
        super().__init__(model, kind, **options)
        if method not in ("lbfgs", "adam"):
            raise ValueError(f"AutoLaplace: method must be 'lbfgs' or 'adam'; got {method!r}")
        self.method, self.steps = method, steps
        dtype = self._z0.dtype
        self.register_buffer("loc", self._z0.clone())
        self.register_buffer("scale_tril", torch.eye(self.dim, dtype=dtype))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self) -> AutoLaplace:
        """Find the mode, factor the Hessian there; return ``self``."""
        model = self.__dict__["model"]
        with torch.enable_grad():
            mode = find_map(model, self._z0, method=self.method, steps=self.steps)
            precision = neg_hessian(model, mode)
        precision_tril, info = torch.linalg.cholesky_ex(precision)
        if int(info) != 0:
            smallest = torch.linalg.eigvalsh(precision)[0].item()
            raise ValueError(
                f"AutoLaplace: the negative Hessian at the mode is not positive definite (smallest eigenvalue "
                f"{smallest:.3g}); the mode search did not reach a maximum, or the density is flat or improper there"
            )
        covariance = torch.cholesky_inverse(precision_tril)
        self.loc.copy_(mode)
        self.scale_tril.copy_(torch.linalg.cholesky(0.5 * (covariance + covariance.mT)))
        self.fitted.fill_(True)
        return self

    def forward(self) -> FullRankNormal:
        if not bool(self.fitted):
            self.fit()
        return FullRankNormal(self.loc, self.scale_tril, validate_args=False)

    def covariance(self) -> Tensor:
        """``[D, D]`` the fitted covariance ``H^{-1}`` (fits first if needed)."""
        q = self()
        return q.covariance_matrix
