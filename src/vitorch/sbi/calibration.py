"""Calibration checks of an amortized posterior: simulation-based calibration and coverage.

Both run the posterior on fresh simulations ``(theta_i, x_i) ~ p(theta) p(x | theta)``,
where the true parameter is known, and ask whether it sits where the posterior says:

* **SBC** (Talts et al., 2018): the rank of ``theta_i`` (per dimension) among ``L``
  draws from ``q(theta | x_i)`` is uniform on ``{0, ..., L}`` for every ``i`` iff
  ``q`` is the posterior (averaged over the prior predictive).  `sbc_test` applies a
  chi-square test of uniformity per dimension with a Bonferroni correction.
* **Expected coverage** (Hermans et al., 2022): the share of ``theta_i`` inside the
  ``(1 - alpha)`` highest-density region of ``q(theta | x_i)``; a calibrated posterior
  covers at the nominal rate, an overconfident one below it.

Passing these is necessary, not sufficient: the prior itself is calibrated.  Compare
with the truth (C2ST against reference samples, `vitorch.sbi.c2st`) where you can.

References:
    Talts, Betancourt, Simpson, Vehtari & Gelman, *Validating Bayesian inference algorithms
    with simulation-based calibration* (arXiv:1804.06788, 2018).
    Hermans, Delaunoy, Rozet, Wehenkel, Begy & Louppe, *A trust crisis in simulation-based
    inference? Your posterior approximations can be unfaithful* (TMLR 2022).
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import NamedTuple

import torch
from scipy import stats
from torch import Tensor
from torch.distributions import Distribution

__all__ = ["sbc_ranks", "sbc_test", "SBCResult", "expected_coverage"]


def _posterior_at(posterior: Callable[[Tensor], Distribution], x: Tensor, n: int) -> Distribution:
    if not callable(posterior):
        raise TypeError(f"posterior must be callable (x [N, ...] -> distribution); got {type(posterior).__name__}")
    q = posterior(x)
    if not isinstance(q, Distribution) or tuple(q.batch_shape) != (n,):
        got = tuple(q.batch_shape) if isinstance(q, Distribution) else type(q).__name__
        raise ValueError(f"posterior(x) must be a distribution with batch shape [N] = [{n}]; got {got}")
    return q


def _check(theta: Tensor, x: Tensor, num_samples: int) -> None:
    if not isinstance(theta, Tensor) or theta.dim() != 2:
        raise ValueError(f"theta must be [N, D]; got {getattr(theta, 'shape', type(theta).__name__)}")
    if not isinstance(x, Tensor) or x.shape[0] != theta.shape[0]:
        raise ValueError(f"x must be [N, ...] with N = {theta.shape[0]} rows; got {getattr(x, 'shape', None)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, numbers.Integral) or num_samples < 1:
        raise ValueError(f"num_posterior_samples must be an integer >= 1; got {num_samples!r}")


@torch.no_grad()
def sbc_ranks(
    posterior: Callable[[Tensor], Distribution], theta: Tensor, x: Tensor, num_posterior_samples: int = 99
) -> Tensor:
    """SBC ranks: ``#{l : theta_l^(i) < theta_i}`` per dimension, with ``theta_l^(i) ~ q(theta | x_i)``.

    Args:
        posterior: ``x [N, *x_shape] -> `` a distribution with batch shape ``[N]``
            (``npe.posterior`` is one).
        theta: ``[N, D]`` parameters drawn from the prior.
        x: ``[N, *x_shape]`` their simulations.
        num_posterior_samples: ``L``, draws per datum.

    Returns:
        ``ranks [N, D]`` integers in ``{0, ..., L}``; uniform for a calibrated posterior.

    References:
        Talts et al., *Validating Bayesian inference algorithms with simulation-based
        calibration* (2018), Algorithm 1.
    """
    _check(theta, x, num_posterior_samples)
    samples = _posterior_at(posterior, x, theta.shape[0]).sample((num_posterior_samples,))  # [L, N, D]
    return (samples < theta).sum(0)


class SBCResult(NamedTuple):
    """What `sbc_test` returns.

    Attributes:
        statistic: ``[D]`` chi-square statistics.
        p_values: ``[D]`` their p-values.
        passed: whether every p-value is above ``level / D`` (Bonferroni).
        level: the family-wise false-rejection rate for a calibrated posterior.
        bins: the number of bins of the histogram.

    References:
        Talts, Betancourt, Simpson, Vehtari & Gelman, *Validating Bayesian Inference Algorithms
        with Simulation-Based Calibration* (2018).
    """

    statistic: Tensor
    p_values: Tensor
    passed: bool
    level: float
    bins: int


def sbc_test(ranks: Tensor, num_posterior_samples: int, bins: int | None = None, level: float = 1e-3) -> SBCResult:
    """Chi-square test that each dimension's SBC ranks are uniform on ``{0, ..., L}``.

    The ``L + 1`` rank values are grouped into ``bins`` equal groups (``bins`` must
    divide ``L + 1``; default the largest divisor of ``L + 1`` not above ``N / 5``, so
    every bin expects at least 5 counts, and at most 20); each dimension gets Pearson's
    statistic with ``bins - 1`` degrees of freedom.  A calibrated posterior fails with
    probability at most ``level`` (Bonferroni over the ``D`` dimensions).

    Args:
        ranks: ``[N, D]`` from `sbc_ranks`.
        num_posterior_samples: ``L``.
        bins: histogram bins.
        level: family-wise false-failure rate.

    Returns:
        `SBCResult`.

    References:
        Talts et al., *Validating Bayesian inference algorithms with simulation-based
        calibration* (2018), sec. 4.
    """
    if not isinstance(ranks, Tensor) or ranks.dim() != 2 or ranks.shape[0] < 1:
        raise ValueError(f"ranks must be [N, D]; got {getattr(ranks, 'shape', type(ranks).__name__)}")
    values = num_posterior_samples + 1
    if bool((ranks < 0).any()) or bool((ranks > num_posterior_samples).any()):
        raise ValueError(f"ranks must lie in 0..{num_posterior_samples} (num_posterior_samples)")
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    n, d = ranks.shape
    if bins is None:
        cap = max(2, min(20, n // 5))
        bins = max(b for b in range(1, cap + 1) if values % b == 0)
    if bins < 2 or values % bins:
        raise ValueError(f"bins must be >= 2 and divide L + 1 = {values}; got {bins}")
    group = ranks.long() // (values // bins)  # [N, D] in 0..bins-1
    counts = torch.stack([torch.bincount(group[:, j], minlength=bins) for j in range(d)])  # [D, bins]
    chi2, p = stats.chisquare(counts.double().numpy(), axis=1)
    p = torch.as_tensor(p)
    return SBCResult(torch.as_tensor(chi2), p, bool((p > level / d).all()), float(level), int(bins))


@torch.no_grad()
def expected_coverage(
    posterior: Callable[[Tensor], Distribution],
    theta: Tensor,
    x: Tensor,
    levels: Tensor | None = None,
    num_posterior_samples: int = 1000,
) -> tuple[Tensor, Tensor]:
    """Empirical coverage of the highest-density regions of ``q(theta | x_i)`` at each level.

    For each datum, ``a_i`` is the share of posterior draws with a higher density than
    the true ``theta_i``: ``theta_i`` lies in the HPD region of credibility ``c`` iff
    ``a_i < c``.  The coverage at ``c`` is the share of data with ``a_i < c``, which
    equals ``c`` for a calibrated posterior (up to ``1/L`` and sampling error
    ``sqrt(c (1 - c) / N)``).

    Args:
        posterior: ``x [N, *x_shape] -> `` distribution with batch shape ``[N]`` and ``log_prob``.
        theta: ``[N, D]`` parameters from the prior.
        x: ``[N, *x_shape]`` their simulations.
        levels: ``[M]`` credibility levels in ``(0, 1)``; default ``0.05, 0.10, ..., 0.95``.
        num_posterior_samples: ``L``, draws per datum.

    Returns:
        ``(levels [M], coverage [M])``.

    References:
        Hermans et al., *A trust crisis in simulation-based inference? Your posterior
        approximations can be unfaithful* (TMLR 2022), sec. 3.
    """
    _check(theta, x, num_posterior_samples)
    levels = torch.linspace(0.05, 0.95, 19, dtype=torch.float64) if levels is None else torch.as_tensor(levels)
    if levels.dim() != 1 or bool(((levels <= 0) | (levels >= 1)).any()):
        raise ValueError(f"levels must be a vector in (0, 1); got {levels}")
    q = _posterior_at(posterior, x, theta.shape[0])
    samples = q.sample((num_posterior_samples,))  # [L, N, D]
    log_q_samples = q.log_prob(samples)  # [L, N]
    log_q_true = q.log_prob(theta)  # [N]
    above = (log_q_samples > log_q_true).double().mean(0)  # [N]
    coverage = (above[None, :] < levels[:, None].to(above)).double().mean(1)
    return levels, coverage
