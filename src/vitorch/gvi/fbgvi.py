"""Forward-backward Gaussian variational inference (FB-GVI) in the Bures-Wasserstein space.

Gaussian VI minimizes ``KL(q || pi) = E_q[V] - H(q) + log Z`` over Gaussians
``q = N(m, Sigma)``, with ``pi ∝ exp(-V)``.  Diao et al. split it into the smooth
energy ``E_q[V]`` and the non-smooth negative entropy and take a proximal-gradient
step in the Wasserstein geometry restricted to Gaussians:

* forward (a Wasserstein gradient step on the energy):
  ``m <- m - h E_q[grad V]``, ``Sigma_half = M Sigma M`` with ``M = I - h E_q[hess V]``;
* backward (the JKO step on the entropy, in closed form):
  ``Sigma <- (Sigma_half + 2h I + [Sigma_half (Sigma_half + 4h I)]^{1/2}) / 2``.

The backward step acts on the eigenvalues of ``Sigma_half`` alone,
``lambda -> (lambda + 2h + sqrt(lambda (lambda + 4h))) / 2 >= h``, so every iterate is
positive definite whatever the (possibly noisy, possibly indefinite) Hessian estimate.

For ``alpha``-strongly log-concave, ``beta``-log-smooth targets and ``h <= 1 / beta``,
the exact iteration contracts the Wasserstein distance to the best Gaussian by
``(1 - alpha h)`` per step and, being a proximal-gradient method, never increases the KL
(Diao et al., Theorems 1 and 2; take the comparison measure equal to the current iterate
in their one-step inequality).  With exact moments of a Gaussian target
(`gaussian_moments`) the target itself is the fixed point.

References:
    Diao, Balasubramanian, Chewi & Salim, *Forward-backward Gaussian variational inference
    via JKO in the Bures-Wasserstein space* (ICML 2023), Algorithm 1.
    Lambert, Chewi, Bach, Bonnabel & Rigollet, *Variational inference via Wasserstein
    gradient flows* (NeurIPS 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ..families import FullRankNormal
from .moments import Moments, stein_moments

__all__ = ["FBGVI", "FBGVIResult", "fbgvi_step"]


class FBGVIResult(NamedTuple):
    """What `FBGVI.run` returns.

    Attributes:
        q: the final ``FullRankNormal``.
        elbo: ``[num_steps + 1]`` ``H(q_k) - E_{q_k}[V]`` at every iterate, from the moments
            the step used (Monte Carlo estimates unless the moments are exact); with a
            normalized ``log_prob`` it equals ``-KL(q_k || pi)``.
        locs: ``[num_steps + 1, D]`` the means along the way.

    References:
        Diao, Balasubramanian, Chewi & Salim (ICML 2023), Algorithm 1.
    """

    q: FullRankNormal
    elbo: Tensor
    locs: Tensor


def _entropy(tril: Tensor) -> Tensor:
    d = tril.shape[-1]
    return tril.diagonal().log().sum() + 0.5 * d * (1 + math.log(2 * math.pi))


def fbgvi_step(q: FullRankNormal, moments: Moments, step_size: float) -> FullRankNormal:
    """One FB-GVI step from ``q`` given the moments of ``V`` under ``q``.

    Args:
        q: the current ``FullRankNormal`` (event ``[D]``, no batch).
        moments: ``E_q[V]``, ``E_q[grad V] [D]``, ``E_q[hess V] [D, D]`` (see `Moments`).
        step_size: ``h > 0``; Diao et al.'s guarantees need ``h <= 1 / beta`` for a
            ``beta``-log-smooth target.

    Returns:
        The next ``FullRankNormal`` (parameters without gradient).

    References:
        Diao et al. (ICML 2023), Algorithm 1.
    """
    loc, tril = q.loc.detach(), q.scale_tril.detach()
    d = loc.shape[-1]
    eye = torch.eye(d, dtype=loc.dtype, device=loc.device)
    new_loc = loc - step_size * moments.grad
    # Sigma_half = M L L^T M: form M L, never Sigma itself, so Sigma_half is PSD by construction.
    m_tril = (eye - step_size * moments.hessian) @ tril
    lam, vectors = torch.linalg.eigh(m_tril @ m_tril.mT)
    lam = lam.clamp_min(0.0)  # rounding can leave -1e-17 on a PSD matrix
    sigma = 0.5 * (lam + 2 * step_size + torch.sqrt(lam * (lam + 4 * step_size)))
    cov = (vectors * sigma) @ vectors.mT
    new_tril = torch.linalg.cholesky(0.5 * (cov + cov.mT))
    return FullRankNormal(new_loc, new_tril, validate_args=False)


class FBGVI:
    """Forward-backward Gaussian VI on a ``FullRankNormal``.

    Args:
        log_prob: ``[n, D] -> [n]`` unnormalized log density of the target (e.g.
            ``model.log_density``); its moments are then estimated by `stein_moments`
            with ``num_samples`` draws.  Give either this or ``moments``.
        step_size: ``h > 0``.  For a ``beta``-log-smooth target use ``h <= 1 / beta``
            (for logistic regression with a ``N(0, s^2 I)`` prior,
            ``beta = 1 / s^2 + lambda_max(X^T X) / 4``).
        moments: a callable ``q -> Moments`` (from `stein_moments`, `hessian_moments`,
            `quadrature_moments`, `gaussian_moments`, or your own exact expectations).
        num_samples: Monte Carlo draws per step when ``log_prob`` is given (even).
        generator: optional ``torch.Generator`` for those draws.

    Example:
        >>> import vitorch as vt
        >>> from vitorch.gvi import FBGVI, gaussian_moments
        >>> A = torch.tensor([[2.0, 0.5], [0.5, 1.0]])
        >>> fb = FBGVI(step_size=0.3, moments=gaussian_moments(torch.ones(2), A))
        >>> out = fb.run(vt.FullRankNormal(torch.zeros(2), torch.eye(2)), num_steps=100)
        >>> torch.allclose(out.q.covariance_matrix, torch.linalg.inv(A), atol=1e-6)
        True

    References:
        Diao, Balasubramanian, Chewi & Salim, *Forward-backward Gaussian variational inference
        via JKO in the Bures-Wasserstein space* (ICML 2023).
    """

    def __init__(
        self,
        log_prob: Callable[[Tensor], Tensor] | None = None,
        step_size: float = 0.1,
        *,
        moments: Callable[[FullRankNormal], Moments] | None = None,
        num_samples: int = 32,
        generator: torch.Generator | None = None,
    ):
        if (log_prob is None) == (moments is None):
            raise ValueError("FBGVI: give exactly one of log_prob (Monte Carlo moments) and moments")
        if moments is not None and not callable(moments):
            raise TypeError(f"FBGVI: moments must be callable q -> Moments; got {type(moments).__name__}")
        if isinstance(step_size, bool) or not isinstance(step_size, (int, float)):
            raise TypeError(f"FBGVI: step_size must be a number; got {type(step_size).__name__}")
        if not (math.isfinite(step_size) and step_size > 0):
            raise ValueError(f"FBGVI: step_size must be positive and finite; got {step_size}")
        self.step_size = float(step_size)
        self.moments = moments if moments is not None else stein_moments(log_prob, num_samples, generator)

    def _check(self, q) -> FullRankNormal:
        if not isinstance(q, FullRankNormal):
            raise TypeError(f"FBGVI: q must be a vitorch FullRankNormal; got {type(q).__name__}")
        if q.batch_shape != ():
            raise ValueError(f"FBGVI: q must be a single Gaussian (batch_shape ()); got {tuple(q.batch_shape)}")
        return q

    def _moments(self, q: FullRankNormal, step: int) -> Moments:
        mom = self.moments(q)
        d = q.event_shape[0]
        if mom.grad.shape != (d,) or mom.hessian.shape != (d, d):
            raise ValueError(
                f"FBGVI: moments must give grad [D] and hessian [D, D] with D = {d}; got "
                f"{tuple(mom.grad.shape)} and {tuple(mom.hessian.shape)}"
            )
        finite = all(bool(torch.isfinite(t).all()) for t in mom)
        if not finite:
            raise ValueError(
                f"FBGVI: non-finite moments of the potential at step {step} (loc {q.loc.tolist()}); "
                "log_prob is -inf or NaN where q puts mass, or the step size is too large"
            )
        return mom

    def step(self, q: FullRankNormal) -> FullRankNormal:
        """One FB-GVI step: ``q_k -> q_{k+1}``."""
        q = self._check(q)
        return fbgvi_step(q, self._moments(q, 0), self.step_size)

    @torch.no_grad()
    def run(self, q: FullRankNormal, num_steps: int) -> FBGVIResult:
        """``num_steps`` steps from ``q``, recording the ELBO of every iterate.

        Args:
            q: the starting ``FullRankNormal``.
            num_steps: number of steps (``>= 0``).

        Returns:
            `FBGVIResult` with the final ``q``, the ELBO trace ``[num_steps + 1]`` and the
            means ``[num_steps + 1, D]``.

        Raises:
            ValueError: on non-finite moments, naming the step.
        """
        q = self._check(q)
        if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 0:
            raise ValueError(f"FBGVI.run: num_steps must be a non-negative integer; got {num_steps!r}")
        q = FullRankNormal(q.loc.detach(), q.scale_tril.detach(), validate_args=False)
        elbo, locs = [], [q.loc]
        for k in range(num_steps + 1):
            mom = self._moments(q, k)
            elbo.append(_entropy(q.scale_tril) - mom.energy)
            if k < num_steps:
                q = fbgvi_step(q, mom, self.step_size)
                locs.append(q.loc)
        return FBGVIResult(q, torch.stack(elbo), torch.stack(locs))
