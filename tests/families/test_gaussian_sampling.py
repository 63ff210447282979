"""Sampler goodness of fit and sample moments of the Gaussian families (TESTING.md family 2).

Each test draws ``N`` particles for a batch of 3 random parameter sets in one call
and checks, per batch element:

* DKWM: ``sup |F_N - Phi| <= eps = sqrt(ln(2 / alpha) / (2 N))`` for a random
  standardized 1-D projection (``N`` points) and for the whitened coordinates
  ``chol(Sigma)^{-1} (z - mu)`` pooled over the ``D`` independent coordinates
  (``N D`` points); ``alpha = 2 (1 - Phi(Z))`` gives the per-assertion false-failure
  rate of the project budget.
* The sample mean and the sample covariance (about the true mean) within ``Z``
  standard errors, the standard errors estimated from the same draws.

Power.  With ``N = 20000`` and ``Z = 5.2``: ``eps = 0.020`` (projection) and
``0.012`` (whitened).  DKWM fails with probability ``>= 1 - alpha`` once the true
sup-distance exceeds ``2 eps``, i.e. ``0.040``: a mean shift above ``0.10`` sd or
a scale error above ``17 %`` on the projection.  The moment checks are sharper:
they fail with probability ``>= 1 - alpha`` once an error exceeds ``2 Z`` standard
errors, i.e. a mean shift above ``2 Z / sqrt(N) = 0.074`` sd or a covariance error
above ``~ 2 Z sqrt(2 / N) = 0.074`` in correlation units.  The errors that matter
are larger: using ``L^T`` for ``L`` or ``d`` for ``sqrt(d)`` moves covariance entries
by ``0.1 - 0.6`` with the parameters of ``gaussian_cases``.
"""

from __future__ import annotations

import math

import gaussian_cases as gc
import pytest
import torch
from scipy import stats

from conftest import Z

N = 20000
BATCH = (3,)
D = 3
ALPHA = 2 * stats.norm.sf(Z)  # the false-failure rate of one Z-standard-error assertion

METHODS = {
    "rsample": lambda q: q.rsample((N,)),
    "sample": lambda q: q.sample((N,)),
    "rsample_and_log_prob": lambda q: q.rsample_and_log_prob((N,))[0],
}


def dkwm_eps(n: int) -> float:
    return math.sqrt(math.log(2 / ALPHA) / (2 * n))


def sup_cdf_distance(x: torch.Tensor) -> torch.Tensor:
    """``sup |F_n - Phi|`` along dim 0 of standard-normal candidates ``x [n, *B]``."""
    n = x.shape[0]
    cdf = torch.special.ndtr(x.sort(dim=0).values)
    i = torch.arange(1, n + 1, dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
    return torch.maximum((i / n - cdf).amax(0), (cdf - (i - 1) / n).amax(0))


@pytest.mark.parametrize("method", list(METHODS))
@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_samples_pass_dkwm_and_moment_checks(kind, method):
    p = gc.params(kind, BATCH, D)
    q = gc.family(kind, p)
    z = METHODS[method](q)
    assert z.shape == (N, *BATCH, D)
    mu, cov = p["loc"], gc.dense_cov(kind, p)
    x = z - mu

    # DKWM on a random standardized projection.
    a = torch.nn.functional.normalize(torch.randn(*BATCH, D), dim=-1)
    proj = (x * a).sum(-1) / (a.unsqueeze(-2) @ cov @ a.unsqueeze(-1)).reshape(BATCH).sqrt()
    assert (sup_cdf_distance(proj) <= dkwm_eps(N)).all(), sup_cdf_distance(proj)

    # DKWM on the whitened coordinates, pooled over the D independent coordinates.
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), x.unsqueeze(-1), upper=False).squeeze(-1)
    pooled = white.movedim(-1, 0).reshape(N * D, *BATCH)
    assert (sup_cdf_distance(pooled) <= dkwm_eps(N * D)).all(), sup_cdf_distance(pooled)

    # Sample mean within Z standard errors.
    t_mean = x.mean(0) / (x.std(0) / math.sqrt(N))
    assert t_mean.abs().max() <= Z, t_mean

    # Sample covariance about the true mean: each entry is a mean of N i.i.d. products.
    prods = x.unsqueeze(-1) * x.unsqueeze(-2)  # [N, *B, D, D]
    t_cov = (prods.mean(0) - cov) / (prods.std(0) / math.sqrt(N))
    assert t_cov.abs().max() <= Z, t_cov


def test_dkwm_check_has_power_against_a_wrong_factor():
    """The check above rejects the classic bug of sampling with ``L^T`` instead of ``L``."""
    p = gc.params("full", BATCH, D)
    # A strongly correlated factor, so that L^T L and L L^T differ markedly.
    p["scale_tril"] = torch.eye(D) + 1.5 * torch.ones(D, D).tril(-1)
    cov = gc.dense_cov("full", p)
    wrong = gc.family("full", {"loc": p["loc"], "scale_tril": p["scale_tril"]}).sample((N,)) - p["loc"]
    wrong = wrong @ torch.linalg.inv(p["scale_tril"]).mT @ p["scale_tril"]  # L eps -> L^T eps
    white = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), wrong.unsqueeze(-1), upper=False).squeeze(-1)
    pooled = white.movedim(-1, 0).reshape(N * D, *BATCH)
    assert (sup_cdf_distance(pooled) > dkwm_eps(N * D)).all()
