"""Importance-weight diagnostics: effective sample size and Pareto-smoothed importance sampling.

`ess`, `psis` and `psis_khat` read the log-weights ``log_w [K, *batch]``
that `vitorch.loss` returns (``out.log_w``) and say how far ``q`` is from the
posterior in the sense that matters for importance sampling (Yao et al., 2018).

References:
    Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling (2015-2024).
    Yao, Vehtari, Simpson & Gelman, Yes, but Did It Work?: Evaluating Variational Inference (2018).
    Zhang & Stephens, A New and Efficient Estimation Method for the Generalized Pareto
    Distribution (Technometrics, 2009).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["ess", "psis", "psis_khat", "KHAT_GOOD", "KHAT_OK"]


KHAT_GOOD = 0.5
"""Below this the importance weights have finite variance; ``q`` is close to the posterior."""
KHAT_OK = 0.7
"""Between `KHAT_GOOD` and this, PSIS estimates are still usable; above it they are unreliable."""

_PRIOR_STRENGTH = 10.0  # Vehtari et al.: k-hat is shrunk towards 0.5 as if by 10 prior observations
_PRIOR_K = 0.5
_MIN_TAIL = 5  # fewer tail draws than this cannot support a two-parameter fit


def _check_log_w(log_w: Tensor) -> Tensor:
    if not isinstance(log_w, Tensor) or not log_w.is_floating_point():
        raise ValueError(f"log_w must be a floating-point tensor [K, *batch]; got {type(log_w).__name__}")
    if log_w.dim() < 1 or log_w.shape[0] < 1:
        raise ValueError(f"log_w must have K >= 1 particles along dim 0; got shape {tuple(log_w.shape)}")
    if bool(torch.isnan(log_w).any()) or bool((log_w == math.inf).any()):
        raise ValueError("log_w must hold no NaN or +inf (a weight of zero is -inf and allowed)")
    # Weights span many orders of magnitude; half precision cannot hold their sums.
    return log_w.detach().float() if log_w.dtype in (torch.float16, torch.bfloat16) else log_w.detach()


@torch.no_grad()
def ess(log_w: Tensor) -> Tensor:
    """Effective sample size ``(sum_k w_k)^2 / sum_k w_k^2`` of importance weights.

    Computed as ``exp(2 logsumexp(log_w) - logsumexp(2 log_w))``, so weights of any
    magnitude are safe.  It lies in ``[1, K]``: ``K`` for equal weights, ``1`` when
    one weight dominates; a row whose weights are all zero (``-inf``) gives ``0``.

    Args:
        log_w: ``[K, *batch]`` log importance weights (unnormalized).

    Returns:
        ``[*batch]`` effective sample sizes (no gradient), in ``log_w``'s dtype.

    References:
        Kong, A Note on Importance Sampling using Standardized Weights (1992).
    """
    lw = _check_log_w(log_w)
    dtype = log_w.dtype
    top = lw.amax(0)
    empty = top == -math.inf
    lw = lw - torch.where(empty, 0.0, top)  # the largest weight becomes 1
    log_ess = 2 * torch.logsumexp(lw, 0) - torch.logsumexp(2 * lw, 0)
    return torch.where(empty, 0.0, log_ess.exp()).to(dtype)


def _tail_size(K: int) -> int:
    return math.ceil(min(0.2 * K, 3.0 * math.sqrt(K)))


def _gpd_fit(x: Tensor) -> tuple[Tensor, Tensor]:
    """Generalized Pareto fit to exceedances by Zhang & Stephens (2009), with PSIS's prior.

    The density is ``(1/sigma) (1 + k x / sigma)^(-1/k - 1)``.  Writing
    ``theta = -k / sigma``, the likelihood maximized over ``k`` for fixed ``theta`` is at
    ``k(theta) = mean(log(1 - theta x))``, with profile log-likelihood
    ``n (log(-theta / k(theta)) - k(theta) - 1)``.  Zhang & Stephens average ``theta``
    over a fixed grid of ``m = 30 + floor(sqrt(n))`` points weighted by that profile
    likelihood (an empirical-Bayes posterior mean): no iterative optimizer, always
    defined, and about as efficient as maximum likelihood (it sits an ``O(1/n)``
    offset from the MLE).  Vehtari et al. then shrink ``k`` towards 0.5
    with the weight of 10 observations: ``k = (n k + 5) / (n + 10)``.

    Args:
        x: ``[n, B]`` non-negative exceedances, sorted ascending along dim 0, with
            a positive largest value in every column.

    Returns:
        ``(k, sigma)``, each ``[B]``.
    """
    n = x.shape[0]
    m = 30 + math.isqrt(n)
    x_max = x[-1]
    x_quartile = x[int(n / 4 + 0.5) - 1]
    # The grid's scale is the first quartile; if ties put it at zero, fall back to a
    # positive scale so the grid stays finite (the likelihood weights still decide).
    x_quartile = torch.where(x_quartile > 0, x_quartile, x_max / n)
    j = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    spread = 1.0 - torch.sqrt(m / (j - 0.5))  # from about -sqrt(2m) up to just below 0
    theta = 1.0 / x_max + spread.unsqueeze(-1) / (3.0 * x_quartile)  # [m, B], every theta < 1 / x_max
    k = torch.log1p(-theta.unsqueeze(1) * x).mean(1)  # [m, B]
    profile = n * (torch.log(-theta / k) - k - 1.0)
    profile = profile.nan_to_num(nan=-math.inf)  # theta == 0 exactly (0/0): weight it out
    theta_hat = (torch.softmax(profile, 0) * theta).sum(0)
    k_hat = torch.log1p(-theta_hat * x).mean(0)
    sigma = -k_hat / theta_hat
    k_hat = (n * k_hat + _PRIOR_STRENGTH * _PRIOR_K) / (n + _PRIOR_STRENGTH)
    return k_hat, sigma


def _gpd_quantile(p: Tensor, k: Tensor, sigma: Tensor) -> Tensor:
    """``F^{-1}(p) = sigma ((1 - p)^(-k) - 1) / k`` (``-sigma log(1 - p)`` at ``k = 0``)."""
    log_survival = torch.log1p(-p)
    k_safe = torch.where(k == 0, 1.0, k)
    return sigma * torch.where(k == 0, -log_survival, torch.expm1(-k_safe * log_survival) / k_safe)


@torch.no_grad()
def psis(log_w: Tensor) -> tuple[Tensor, Tensor]:
    """Pareto-smoothed importance sampling: smoothed log-weights and the k-hat diagnostic.

    Per batch element, the ``M = ceil(min(K / 5, 3 sqrt(K)))`` largest weights are
    fitted by a generalized Pareto distribution above the next-largest weight ``u``
    (Zhang & Stephens' 2009 estimator with Vehtari et al.'s weakly informative prior
    on the shape), and replaced by the fitted distribution's quantiles at the
    plotting positions, ``u + F^{-1}((j - 1/2) / M)``, ``j = 1..M``, truncated
    at the largest raw weight.  The rest of the weights are unchanged and the order of
    the weights is kept.  The fitted shape k-hat says how heavy the weights' tail is
    (moments of the weights of order below ``1 / k`` are finite):

    * ``k < 0.5`` (`KHAT_GOOD`): finite variance; ``q`` is a good proposal.
    * ``0.5 <= k < 0.7`` (`KHAT_OK`): infinite variance, but PSIS estimates are
      still usable (the latest version of the paper uses ``min(1 - 1/log10(K), 0.7)``).
    * ``k >= 0.7``: unreliable; importance-sampled estimates, including IWAE bounds,
      cannot be trusted and ``q`` is far from the posterior (Yao et al., 2018).

    Special cases: with fewer than 5 tail draws (``K <= 20``) or a row whose weights
    are all zero, k-hat is ``inf`` (cannot be assessed) and the row is not smoothed;
    if the ``M`` largest weights all equal the threshold (bounded weights, e.g.
    ``q`` equal to the posterior) k-hat is ``-inf`` and nothing needs smoothing.

    Args:
        log_w: ``[K, *batch]`` log importance weights (unnormalized).

    Returns:
        ``(smoothed_log_w, khat)``: ``[K, *batch]`` smoothed log-weights on the input's
        scale (not normalized) and ``[*batch]`` k-hat, in ``log_w``'s dtype, no gradient.

    References:
        Vehtari, Simpson, Gelman, Yao & Gabry, Pareto Smoothed Importance Sampling (2015-2024).
    """
    lw = _check_log_w(log_w).double()  # the fit takes logs of small differences
    dtype = log_w.dtype
    K, batch = lw.shape[0], lw.shape[1:]
    lw = lw.reshape(K, -1)
    khat = torch.full(lw.shape[1:], math.inf, dtype=lw.dtype, device=lw.device)
    M = _tail_size(K)
    if M < _MIN_TAIL:
        return log_w.detach().clone(), khat.reshape(batch).to(dtype)

    sorted_lw, order = lw.sort(0)
    top = sorted_lw[-1]
    fit = top > -math.inf  # rows with at least one nonzero weight
    s = sorted_lw - torch.where(fit, top, 0.0)  # the largest weight becomes 1
    tail, cutoff = s[K - M :], s[K - M - 1]
    # Exceedances over the threshold weight exp(cutoff), formed without cancellation.
    finite_cut = cutoff > -math.inf
    safe_cut = torch.where(finite_cut, cutoff, 0.0)
    x = torch.where(finite_cut, safe_cut.exp() * torch.expm1(tail - safe_cut), tail.exp())
    tied = fit & (x[-1] <= 0)
    fit = fit & ~tied
    x = torch.where(fit, x, 1.0)  # placeholder columns, results discarded below
    k, sigma = _gpd_fit(x)
    khat = torch.where(tied, -math.inf, torch.where(fit, k, khat))

    smooth = fit & torch.isfinite(k) & (sigma > 0)
    p = (torch.arange(1, M + 1, dtype=s.dtype, device=s.device) - 0.5) / M
    q = _gpd_quantile(p.unsqueeze(-1), k, sigma)  # [M, B], ascending exceedances
    new_tail = torch.where(finite_cut, safe_cut + torch.log1p(q * torch.exp(-safe_cut)), q.log())
    new_tail = new_tail.clamp_max(0.0)  # no smoothed weight above the largest raw weight
    # Only the smoothed tail is shifted back; the rest keeps its input values bit for bit.
    sorted_lw[K - M :] = torch.where(smooth, new_tail + torch.where(smooth, top, 0.0), sorted_lw[K - M :])
    smoothed = torch.empty_like(sorted_lw).scatter_(0, order, sorted_lw)
    return smoothed.reshape(K, *batch).to(dtype), khat.reshape(batch).to(dtype)


def psis_khat(log_w: Tensor) -> Tensor:
    """The Pareto k-hat of `psis` alone: ``log_w [K, *batch] -> [*batch]``.

    Read it with the thresholds `KHAT_GOOD` (0.5) and `KHAT_OK` (0.7);
    see `psis`.

    References:
        Vehtari, Simpson, Gelman, Yao & Gabry, *Pareto Smoothed Importance Sampling* (arXiv:1507.02646,
        2015; JMLR 2024).
        Yao, Vehtari, Simpson & Gelman, *Yes, but Did It Work?: Evaluating Variational Inference* (ICML 2018).
    """
    return psis(log_w)[1]
