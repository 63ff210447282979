"""Closed-form KL between Gaussian families (TESTING.md family 13).

Every registered pair (a vitorch family on at least one side; the other side a
vitorch family or torch's ``Independent(Normal, 1)``, ``MultivariateNormal`` or
``LowRankMultivariateNormal``) is checked

* exactly against torch's own dense ``MultivariateNormal`` KL (round-off tolerance
  as in ``test_gaussian_densities``), including batch broadcasting between q and p;
* against the Monte Carlo estimate ``mean(log q(z) - log p(z))``, ``z ~ q``, within
  ``Z`` standard errors estimated from the same draws.  With ``N = 4000`` this
  detects an error larger than ``2 Z sd / sqrt(N) ~ 0.16 sd`` of the log-ratio, i.e.
  a few percent of KL values that are of order one here.
"""

from __future__ import annotations

import itertools
import math

import gaussian_cases as gc
import pytest
import torch
from torch.autograd import gradcheck
from torch.distributions import Independent, Laplace, kl_divergence
from torch.testing import assert_close

from vitorch.families import DiagNormal

from conftest import Z

RTOL = ATOL = 1e-10  # float64 round-off, as in test_gaussian_densities
D = 3
N = 4000
SIDES = [(lib, kind) for lib in ("vitorch", "torch") for kind in gc.FAMILIES]
PAIRS = [(a, b) for a, b in itertools.product(SIDES, repeat=2) if "vitorch" in (a[0], b[0])]


def _build(side, p):
    lib, kind = side
    return gc.family(kind, p) if lib == "vitorch" else gc.torch_twin(kind, p)


def _pair(q_side, p_side, q_batch=(2,), p_batch=(2,)):
    pq = gc.params(q_side[1], q_batch, D)
    pp = gc.params(p_side[1], p_batch, D, s=1.3)
    return pq, pp, _build(q_side, pq), _build(p_side, pp)


@pytest.mark.parametrize(("q_side", "p_side"), PAIRS, ids=[f"{a[0]}-{a[1]}||{b[0]}-{b[1]}" for a, b in PAIRS])
def test_kl_matches_dense_torch_and_monte_carlo(q_side, p_side):
    pq, pp, q, p = _pair(q_side, p_side)
    kl = kl_divergence(q, p)
    dense = kl_divergence(gc.dense_mvn(q_side[1], pq), gc.dense_mvn(p_side[1], pp))
    assert kl.shape == (2,)
    assert_close(kl, dense, rtol=RTOL, atol=ATOL)

    z = q.sample((N,))
    log_ratio = q.log_prob(z) - p.log_prob(z)
    se = log_ratio.std(0) / math.sqrt(N)
    assert ((log_ratio.mean(0) - kl).abs() <= Z * se).all(), (log_ratio.mean(0), kl, se)


@pytest.mark.parametrize(("q_kind", "p_kind"), list(itertools.product(gc.FAMILIES, repeat=2)))
def test_kl_broadcasts_batches_and_has_correct_gradients(q_kind, p_kind):
    pq, pp, q, p = _pair(("vitorch", q_kind), ("vitorch", p_kind), q_batch=(2, 1), p_batch=(3,))
    dense = kl_divergence(gc.dense_mvn(q_kind, pq), gc.dense_mvn(p_kind, pp))
    assert_close(kl_divergence(q, p), dense, rtol=RTOL, atol=ATOL)

    n_q = len(pq)
    leaves = [t.clone().requires_grad_() for t in (*pq.values(), *pp.values())]

    def kl_of(*args):
        q = gc.CLASSES[q_kind](*args[:n_q], validate_args=False)
        p = gc.CLASSES[p_kind](*args[n_q:], validate_args=False)
        return kl_divergence(q, p)

    assert gradcheck(kl_of, tuple(leaves))


@pytest.mark.parametrize("kind", gc.FAMILIES)
def test_kl_of_a_family_with_itself_is_zero(kind):
    q = gc.family(kind, gc.params(kind, (4,), D))
    # The two halves of KL (cross-entropy and entropy) are O(D) numbers that cancel.
    assert_close(kl_divergence(q, q), torch.zeros(4), rtol=0, atol=ATOL)


def test_kl_rejects_mismatched_events_and_unsupported_pairs():
    with pytest.raises(ValueError, match=r"q \(3,\), p \(4,\)"):
        kl_divergence(DiagNormal(torch.zeros(3), torch.ones(3)), DiagNormal(torch.zeros(4), torch.ones(4)))
    with pytest.raises(NotImplementedError, match="Independent"):
        kl_divergence(DiagNormal(torch.zeros(3), torch.ones(3)), Independent(Laplace(torch.zeros(3), 1.0), 1))


@pytest.mark.parametrize("q_kind", gc.FAMILIES)
@pytest.mark.parametrize("p_kind", gc.FAMILIES)
def test_kl_with_factors_shared_across_the_batch(q_kind, p_kind):
    """Parameters of p other than loc are shared by p's batch (unbroadcast inside the families)."""
    pq = gc.params(q_kind, (2, 1), D)
    pp = gc.params(p_kind, (), D, s=1.3)
    pp["loc"] = torch.randn(3, D)
    q, p = gc.family(q_kind, pq), gc.family(p_kind, pp)
    dense_p = gc.dense_mvn(p_kind, {k: v if k == "loc" else v.expand(3, *v.shape).clone() for k, v in pp.items()})
    expected = kl_divergence(gc.dense_mvn(q_kind, pq), dense_p)
    assert expected.shape == (2, 3)
    assert_close(kl_divergence(q, p), expected, rtol=RTOL, atol=ATOL)
    assert_close(kl_divergence(p, q), kl_divergence(dense_p, gc.dense_mvn(q_kind, pq)), rtol=RTOL, atol=ATOL)
