"""Shape algebra of every head over random sizes and weight-posterior parameterizations (hypothesis)."""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st

from vitorch.models.last_layer import (
    Dense,
    DensePrecision,
    Diagonal,
    LowRank,
    VBLLClassification,
    VBLLDenseNoiseRegression,
    VBLLGenerativeClassification,
    VBLLHeteroscedasticRegression,
    VBLLRegression,
    VBLLStudentTRegression,
)

COVARIANCES = [Dense, Diagonal, DensePrecision, LowRank.with_rank(1)]
REGRESSION = [VBLLRegression, VBLLDenseNoiseRegression, VBLLStudentTRegression, VBLLHeteroscedasticRegression]

sizes = st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 3))


@given(sizes=sizes, cov=st.sampled_from(COVARIANCES), cls=st.sampled_from(REGRESSION))
def test_regression_heads(sizes, cov, cls):
    n, d, o = sizes
    phi, y = torch.randn(n, d), torch.randn(n, o)
    head = cls(d, o, covariance=cov)
    assert head.weights.quad(phi).shape == (n, o)
    elbo = head.elbo(phi, y)
    assert elbo.shape == () and torch.isfinite(elbo)
    out = head.loss(phi, y, num_data=n + 3)
    assert out.loss.shape == () and out.bound.shape == (n,) and not out.bound.requires_grad
    out.loss.backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in head.parameters())
    pred = head(phi).predictive
    if o == 1:
        assert pred.batch_shape == (n,) and pred.event_shape == ()
        assert pred.log_prob(y.squeeze(-1)).shape == (n,)
        assert head.elbo(phi, y.squeeze(-1)).shape == ()
    else:
        assert pred.batch_shape == (n,) and pred.event_shape == (o,)
        assert pred.log_prob(y).shape == (n,)


@given(sizes=sizes, cov=st.sampled_from(COVARIANCES), generative=st.booleans())
def test_classification_heads(sizes, cov, generative):
    n, d, c = sizes
    c += 1  # at least two classes
    phi, y = torch.randn(n, d), torch.randint(0, c, (n,))
    head = (VBLLGenerativeClassification if generative else VBLLClassification)(d, c, covariance=cov)
    bound = head.bound(phi, y)
    assert bound.shape == (n,) and torch.isfinite(bound).all()
    if not generative:  # Jensen's bound on a log-probability is <= 0
        assert bool((bound <= 1e-12).all())
    out = head.loss(phi, y, num_data=n)
    assert out.bound.shape == (n,)
    out.loss.backward()
    out = head(phi)
    assert out.predictive.probs.shape == (n, c) and out.ood_score.shape == (n,)
    torch.testing.assert_close(out.predictive.probs.sum(-1), torch.ones(n))
