"""Shape algebra of the Gaussian families, generated with hypothesis (TESTING.md family 3).

Parameters get independent batch shapes that broadcast against each other (some
dimensions dropped on the left, some set to 1); values passed to ``log_prob``
broadcast against the batch in the same way.  Every shape is checked, and every
value against a dense ``MultivariateNormal`` built from the materialized
parameters (round-off tolerance as in ``test_gaussian_densities``).
"""

from __future__ import annotations

import gaussian_cases as gc
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

RTOL = ATOL = 1e-10  # float64 round-off on well-conditioned D <= 3 covariances, as in test_gaussian_densities

SAMPLE_SHAPES = st.sampled_from([(), (2,), (3, 2)])


@st.composite
def broadcast_partner(draw, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A shape that broadcasts with ``shape``: a suffix of it with some entries set to 1."""
    k = draw(st.integers(0, len(shape)))
    return tuple(1 if draw(st.booleans()) else n for n in shape[len(shape) - k :])


@st.composite
def families(draw):
    kind = draw(st.sampled_from(gc.FAMILIES))
    # Tensors come from a seed hypothesis chose, so that a failing example replays exactly.
    torch.manual_seed(draw(st.integers(0, 2**32 - 1)))
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    d = draw(st.integers(1, 3))
    rank = draw(st.integers(1, 2))
    p = {name: gc.params(kind, draw(broadcast_partner(batch)), d, rank=rank)[name] for name in gc.params(kind, (), d)}
    if draw(st.booleans()):  # some parameters expanded to the whole batch, as stride-0 views
        full = torch.broadcast_shapes(*(t.shape[: t.dim() - _event_dims(n)] for n, t in p.items()))
        p = {
            n: t.expand(*full, *t.shape[t.dim() - _event_dims(n) :]) if draw(st.booleans()) else t for n, t in p.items()
        }
    return kind, p, d


def _event_dims(name: str) -> int:
    return 2 if name in ("scale_tril", "cov_factor") else 1


def _materialized(kind, p, batch_shape):
    """The parameters broadcast to the full batch and copied, independently of the family code."""
    return {n: t.expand(*batch_shape, *t.shape[t.dim() - _event_dims(n) :]).clone() for n, t in p.items()}


@given(case=families(), sample_shape=SAMPLE_SHAPES)
def test_draw_and_density_shapes(case, sample_shape):
    kind, p, d = case
    q = gc.family(kind, p)
    batch = torch.broadcast_shapes(*(t.shape[: t.dim() - _event_dims(n)] for n, t in p.items()))
    assert q.batch_shape == batch and q.event_shape == (d,)
    full = (*sample_shape, *batch, d)
    assert q.sample(sample_shape).shape == full and not q.sample(sample_shape).requires_grad
    assert q.rsample(sample_shape).shape == full
    z, log_q = q.rsample_and_log_prob(sample_shape)
    assert z.shape == full and log_q.shape == (*sample_shape, *batch)
    assert q.log_prob(z).shape == (*sample_shape, *batch)
    assert q.entropy().shape == batch
    assert q.mean.shape == q.variance.shape == (*batch, d)
    assert q.covariance_matrix.shape == (*batch, d, d)

    ref = gc.dense_mvn(kind, _materialized(kind, p, batch))
    assert_close(q.log_prob(z), ref.log_prob(z), rtol=RTOL, atol=ATOL)
    assert_close(q.entropy(), ref.entropy(), rtol=RTOL, atol=ATOL)


@given(case=families(), data=st.data())
def test_log_prob_broadcasts_values_against_the_batch(case, data):
    kind, p, d = case
    q = gc.family(kind, p)
    batch = q.batch_shape
    # A value whose batch part broadcasts with q's: each dimension kept, set to 1, or (where
    # q's is 1) grown to 2; then either leading dimensions dropped or up to two added.
    partner = [data.draw(st.sampled_from([n, 1] if n > 1 else [1, 2])) for n in batch]
    if data.draw(st.booleans()):
        partner = partner[data.draw(st.integers(0, len(partner))) :]
    else:
        partner = data.draw(st.lists(st.integers(1, 2), max_size=2)) + partner
    value = torch.randn(*partner, d)
    expected = torch.broadcast_shapes(tuple(partner), batch)
    lp = q.log_prob(value)
    assert lp.shape == expected
    ref = gc.dense_mvn(kind, _materialized(kind, p, batch))
    assert_close(lp, ref.log_prob(value), rtol=RTOL, atol=ATOL)


@given(case=families(), new=st.lists(st.integers(1, 3), min_size=1, max_size=2), sample_shape=SAMPLE_SHAPES)
def test_expand(case, new, sample_shape):
    kind, p, d = case
    q = gc.family(kind, p)
    shape = (*new, *q.batch_shape)
    e = q.expand(shape)
    assert type(e) is type(q) and e.batch_shape == shape and e.event_shape == q.event_shape
    assert e.rsample(sample_shape).shape == (*sample_shape, *shape, d)
    z, log_q = e.rsample_and_log_prob(sample_shape)
    assert z.shape == (*sample_shape, *shape, d) and log_q.shape == (*sample_shape, *shape)
    assert_close(e.log_prob(z), q.log_prob(z), rtol=RTOL, atol=ATOL)
    assert_close(e.entropy(), q.entropy().expand(shape), rtol=0, atol=0)
    assert_close(e.covariance_matrix, q.covariance_matrix.expand(*shape, d, d), rtol=RTOL, atol=0)
