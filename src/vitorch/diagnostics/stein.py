"""The kernelized Stein discrepancy: how far a sample is from a target known only up to a constant.

For a target ``p`` with score ``s = grad log p`` and a kernel ``k``, the Stein kernel

    ``k_p(x, y) = s(x)^T s(y) k(x, y) + s(x)^T grad_y k(x, y) + s(y)^T grad_x k(x, y)
                 + tr(grad_x grad_y k(x, y))``

has mean zero under ``p`` in each argument, and ``KSD^2(q, p) = E_{x, y ~ q} k_p(x, y)``
is zero exactly when ``q = p`` (for a characteristic kernel and mild conditions on ``p``).
From draws ``x_1..x_n`` of ``q`` it is estimated by the V-statistic
``(1/n^2) sum_{i,j} k_p(x_i, x_j)`` (biased upwards, never negative; its square root is
Gorham & Mackey's discrepancy) or the U-statistic ``sum_{i != j} k_p(x_i, x_j) / (n(n-1))``
(unbiased: mean exactly zero when the ``x_i`` are independent draws of ``p``; can be
negative).  Only the score is needed, so unnormalized targets and the particles of SVGD
are measured directly.

Kernels: the inverse multiquadric ``k = (c^2 + |x - y|^2 / l^2)^beta``, ``beta`` in
``(-1, 0)``, whose KSD detects non-convergence (Gorham & Mackey, 2017, Thm 8; the
default ``c = 1, beta = -1/2``), and the RBF ``k = exp(-|x - y|^2 / (2 l^2))``, whose KSD
can miss non-convergence in ``D >= 3`` (ibid., Thm 6) but is the one of Liu, Lee & Jordan
(2016) and Chwialkowski, Strathmann & Gretton (2016).

References:
    Gorham & Mackey, *Measuring Sample Quality with Kernels* (ICML 2017).
    Liu, Lee & Jordan, *A Kernelized Stein Discrepancy for Goodness-of-fit Tests* (ICML 2016).
    Chwialkowski, Strathmann & Gretton, *A Kernel Test of Goodness of Fit* (ICML 2016).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["ksd"]

_KERNELS = ("imq", "rbf")


def _scores(x: Tensor, score_or_log_prob) -> Tensor:
    """``[*batch, n, D]`` scores from a tensor of scores, a score function or a log-density."""
    if isinstance(score_or_log_prob, Tensor):
        out = score_or_log_prob
    elif callable(score_or_log_prob):
        with torch.enable_grad():
            xr = x.detach().requires_grad_(True)
            out = score_or_log_prob(xr)
            if not isinstance(out, Tensor):
                raise TypeError(f"ksd: score_or_log_prob must return a tensor; got {type(out).__name__}")
            if out.shape == x.shape[:-1]:  # a log-density [*batch, n]: its gradient is the score
                if not out.requires_grad:
                    raise ValueError("ksd: the log-density does not depend on the samples (no gradient)")
                (out,) = torch.autograd.grad(out.sum(), xr)
    else:
        raise TypeError(
            "ksd: score_or_log_prob must be a tensor of scores [*batch, n, D], a score function "
            f"x -> [*batch, n, D] or a log-density x -> [*batch, n]; got {type(score_or_log_prob).__name__}"
        )
    if out.shape != x.shape:
        raise ValueError(
            f"ksd: scores must have the samples' shape {tuple(x.shape)} (or a log-density return "
            f"{tuple(x.shape[:-1])}); got {tuple(out.shape)}"
        )
    if not bool(torch.isfinite(out).all()):
        raise ValueError("ksd: the score is NaN or infinite at some samples")
    return out.detach()


def _median_sq(sq: Tensor) -> Tensor:
    """``[*batch]`` median of the squared distances between distinct samples (1 where it is 0)."""
    n = sq.shape[-1]
    i, j = torch.triu_indices(n, n, offset=1, device=sq.device)
    med = sq[..., i, j].median(-1).values
    return torch.where(med > 0, med, torch.ones_like(med))


def ksd(
    samples,
    score_or_log_prob: Tensor | Callable[[Tensor], Tensor],
    kernel: str = "imq",
    bandwidth: float | None = None,
    u_statistic: bool = True,
    beta: float = -0.5,
    c: float = 1.0,
) -> Tensor:
    """Estimate of the squared kernelized Stein discrepancy ``KSD^2`` of samples to a target.

    Args:
        samples: ``[*batch, n, D]`` draws, ``n >= 2`` (a `vitorch.particles.Particles`
            is read as its ``[n, D]`` particles).
        score_or_log_prob: the target's score at the samples as a tensor ``[*batch, n, D]``,
            or a callable taking the samples ``[*batch, n, D]`` and returning either the
            score (same shape) or the log-density ``[*batch, n]`` (differentiated by autograd).
        kernel: ``"imq"`` (default) ``(c^2 + r^2 / l^2)^beta``, or ``"rbf"`` ``exp(-r^2 / (2 l^2))``.
        bandwidth: the length ``l``.  ``None``: the median distance between distinct
            samples (a data-dependent kernel; pass a fixed ``l`` to compare estimates
            across sample sets).
        u_statistic: ``True`` for the unbiased U-statistic (default), ``False`` for the
            V-statistic (non-negative).
        beta: the IMQ exponent, in ``(-1, 0)``.
        c: the IMQ offset, positive.

    Returns:
        ``[*batch]`` the ``KSD^2`` estimate (take the square root of a V-statistic for the
        discrepancy itself).  No gradient flows.

    Raises:
        TypeError: if ``samples`` is not a floating tensor (or Particles), or
            ``score_or_log_prob`` is neither a tensor nor a callable.
        ValueError: for fewer than two samples, scores of the wrong shape or not finite,
            an unknown kernel, a non-positive bandwidth or ``c``, or ``beta`` outside ``(-1, 0)``.

    Example:
        >>> p = torch.distributions.MultivariateNormal(torch.zeros(2), torch.eye(2))
        >>> ksd(p.sample((500,)), p.log_prob)          # near 0
        >>> ksd(p.sample((500,)) + 1.0, p.log_prob)    # clearly positive

    References:
        Gorham & Mackey, *Measuring Sample Quality with Kernels* (ICML 2017), sec. 3-4;
        Liu, Lee & Jordan, *A Kernelized Stein Discrepancy for Goodness-of-fit Tests* (ICML 2016), eq. 11-14.
    """
    x = samples.particles if hasattr(samples, "particles") and not isinstance(samples, Tensor) else samples
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"ksd: samples must be a floating tensor [*batch, n, D]; got {got}")
    if x.dim() < 2 or x.shape[-2] < 2 or x.shape[-1] < 1:
        raise ValueError(f"ksd: samples must be [*batch, n, D] with n >= 2 and D >= 1; got {tuple(x.shape)}")
    if kernel not in _KERNELS:
        raise ValueError(f"ksd: kernel must be one of {_KERNELS}; got {kernel!r}")
    if bandwidth is not None and not (isinstance(bandwidth, int | float) and 0 < bandwidth < math.inf):
        raise ValueError(f"ksd: bandwidth must be a positive finite number or None; got {bandwidth!r}")
    if kernel == "imq" and not (-1 < beta < 0):
        raise ValueError(f"ksd: the IMQ exponent beta must lie in (-1, 0); got {beta!r}")
    if kernel == "imq" and not (0 < c < math.inf):
        raise ValueError(f"ksd: the IMQ offset c must be positive and finite; got {c!r}")
    s = _scores(x, score_or_log_prob)
    x = x.detach()
    n, D = x.shape[-2], x.shape[-1]
    x = x - x.mean(-2, keepdim=True)  # translation invariant; keeps the GEMM's distances accurate
    xx = x.pow(2).sum(-1)
    sq = (xx[..., :, None] + xx[..., None, :] - 2.0 * (x @ x.mT)).clamp_min(0.0)  # [*batch, n, n]
    l2 = _median_sq(sq) if bandwidth is None else x.new_tensor(float(bandwidth) ** 2)
    l2 = l2[..., None, None] if l2.dim() else l2
    # (s(y) - s(x))^T (x - y) for all pairs, from the GEMMs s x^T: s_j.x_i - s_i.x_i - s_j.x_j + s_i.x_j.
    sx = s @ x.mT  # [i, j] = s_i . x_j
    diag = sx.diagonal(dim1=-2, dim2=-1)
    cross = sx.mT - diag[..., :, None] - diag[..., None, :] + sx
    ss = s @ s.mT
    if kernel == "rbf":
        k = torch.exp(-0.5 * sq / l2)
        # grad_x k = -(x - y) k / l^2, grad_y k = (x - y) k / l^2, tr(grad_x grad_y k) = (D / l^2 - r^2 / l^4) k.
        kp = k * (ss - cross / l2 + D / l2 - sq / l2.pow(2))
    else:
        u = c * c + sq / l2
        k = torch.exp(beta * u.log())  # u^beta; u^(beta-1) = k / u, u^(beta-2) = k / u^2
        ku = k / u
        # grad_x k = (2 beta / l^2) u^(beta-1) (x - y) = -grad_y k;
        # tr(grad_x grad_y k) = -(2 beta D / l^2) u^(beta-1) - (4 beta (beta-1) / l^4) r^2 u^(beta-2).
        kp = k * ss + ku * ((2 * beta / l2) * (cross - D) - (4 * beta * (beta - 1) / l2.pow(2)) * sq / u)
    if u_statistic:
        total = kp.sum((-2, -1)) - kp.diagonal(dim1=-2, dim2=-1).sum(-1)
        return total / (n * (n - 1))
    return kp.sum((-2, -1)) / (n * n)
