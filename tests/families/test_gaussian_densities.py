"""Densities and moments of the Gaussian families against scipy and torch (TESTING.md family 1).

Deterministic comparisons in float64.  Tolerance: both sides do O(D^3) flops on
covariances whose condition number stays below ~30 (see ``gaussian_cases``), so
the round-off is below ``D^3 * cond * eps ~ 64 * 30 * 2.2e-16 ~ 4e-13`` relative;
``RTOL = 1e-10`` keeps a margin of ~250 and still catches any formula error
(a wrong constant is ~1e-1, a wrong sign or transpose ~1).
"""

from __future__ import annotations

import itertools

import gaussian_cases as gc
import numpy as np
import pytest
import torch
from scipy import stats
from torch.testing import assert_close

RTOL = ATOL = 1e-10  # see the module docstring

GRID = list(itertools.product(gc.FAMILIES, [(), (2, 3)], [1, 4], [1e-8, 1.0, 1e8]))


def _scipy_logpdf_and_entropy(loc: torch.Tensor, cov: torch.Tensor, z: torch.Tensor):
    """scipy's log-density of ``z [N, *B, D]`` and entropy, one frozen distribution per batch element."""
    batch = loc.shape[:-1]
    logpdf = np.empty((z.shape[0], *batch))
    entropy = np.empty(batch)
    for idx in np.ndindex(*batch):
        mvn = stats.multivariate_normal(loc[idx].numpy(), cov[idx].numpy())
        x = z[(slice(None), *idx)].numpy()
        logpdf[(slice(None), *idx)] = mvn.logpdf(x).reshape(-1)
        entropy[idx] = mvn.entropy()
    return torch.from_numpy(logpdf), torch.from_numpy(entropy)


@pytest.mark.parametrize(("kind", "batch", "d", "s"), GRID)
def test_log_prob_entropy_moments_match_scipy(kind, batch, d, s):
    p = gc.params(kind, batch, d, s)
    q = gc.family(kind, p)
    cov = gc.dense_cov(kind, p)
    z = q.sample((5,))
    # Points far in the tail too: 6 standard deviations along the first axis.
    z = torch.cat([z, (q.mean + 6 * s * torch.eye(d)[0]).unsqueeze(0)])
    logpdf, entropy = _scipy_logpdf_and_entropy(p["loc"], cov, z)
    assert_close(q.log_prob(z), logpdf, rtol=RTOL, atol=ATOL)
    assert_close(q.entropy(), entropy, rtol=RTOL, atol=ATOL)
    assert_close(q.mean, p["loc"], rtol=0, atol=0)
    assert_close(q.covariance_matrix, cov, rtol=RTOL, atol=0)
    assert_close(q.variance, cov.diagonal(dim1=-2, dim2=-1), rtol=RTOL, atol=0)
    assert_close(q.stddev, cov.diagonal(dim1=-2, dim2=-1).sqrt(), rtol=RTOL, atol=0)
    assert_close(q.scale_tril @ q.scale_tril.mT, cov, rtol=RTOL, atol=0)


@pytest.mark.parametrize("s", [1e-150, 1e-8, 1.0, 1e8, 1e150])
def test_diag_normal_matches_scipy_norm_at_extreme_scales(s):
    p = {"loc": s * torch.randn(2, 3, 4), "scale": s * torch.empty(2, 3, 4).uniform_(0.5, 1.5)}
    q = gc.family("diag", p)
    z = q.sample((7,))
    ref = stats.norm(p["loc"].numpy(), p["scale"].numpy())
    assert_close(q.log_prob(z), torch.from_numpy(ref.logpdf(z.numpy()).sum(-1)), rtol=RTOL, atol=ATOL)
    assert_close(q.entropy(), torch.from_numpy(ref.entropy().sum(-1)), rtol=RTOL, atol=ATOL)
    assert_close(q.variance, torch.from_numpy(ref.var()), rtol=RTOL, atol=0)
    assert_close(q.mean, torch.from_numpy(ref.mean()), rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "batch", "d", "s"), GRID)
def test_agrees_with_torch_distributions(kind, batch, d, s):
    p = gc.params(kind, batch, d, s)
    q = gc.family(kind, p)
    for ref in (gc.torch_twin(kind, p), gc.dense_mvn(kind, p)):
        assert q.batch_shape == ref.batch_shape and q.event_shape == ref.event_shape
        z = ref.sample((6,))
        assert_close(q.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL)
        assert_close(q.entropy(), ref.entropy(), rtol=RTOL, atol=ATOL)
        assert_close(q.variance, ref.variance, rtol=RTOL, atol=0)
        assert_close(q.mean, ref.mean, rtol=0, atol=0)


@pytest.mark.parametrize(("kind", "batch", "d", "s"), GRID)
def test_rsample_and_log_prob_log_q_equals_log_prob(kind, batch, d, s):
    q = gc.family(kind, gc.params(kind, batch, d, s))
    z, log_q = q.rsample_and_log_prob((3, 2))
    assert z.shape == (3, 2, *batch, d) and log_q.shape == (3, 2, *batch)
    assert_close(log_q, q.log_prob(z), rtol=RTOL, atol=ATOL)
