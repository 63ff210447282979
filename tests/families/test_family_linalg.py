"""The folded batched products and solves of ``vitorch.families._linalg`` against plain torch.

Shapes are generated with hypothesis: matrices with batch dimensions that are
missing, of size 1, expanded with stride 0, or full; right-hand sides whose batch
broadcasts against the matrix's and may be non-contiguous.  The reference is
``torch.matmul`` / ``torch.linalg.solve_triangular`` on materialized broadcasts.
Tolerance: float64 round-off of a length-``D <= 4`` dot product or a triangular
solve with diagonal entries in ``[1, 2]``, far below ``1e-12``.
"""

from __future__ import annotations

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch.testing import assert_close

from vitorch.families import _linalg

TOL = 1e-12  # see the module docstring


@st.composite
def operands(draw):
    full = tuple(draw(st.lists(st.integers(1, 3), max_size=3)))
    d = draw(st.integers(1, 4))
    # Tensors come from a seed hypothesis chose, so that a failing example replays exactly.
    torch.manual_seed(draw(st.integers(0, 2**32 - 1)))
    # The matrix: a suffix of the batch, each dimension full, 1, or expanded with stride 0.
    k = draw(st.integers(0, len(full)))
    kinds = [draw(st.sampled_from(["full", "one", "expanded"])) for _ in full[len(full) - k :]]
    base_shape = [n if kind == "full" else 1 for n, kind in zip(full[len(full) - k :], kinds)]
    tril = torch.randn(*base_shape, d, d).tril(-1) + torch.diag_embed(torch.rand(*base_shape, d) + 1)
    expand_to = [n if kind != "one" else 1 for n, kind in zip(full[len(full) - k :], kinds)]
    tril = tril.expand(*expand_to, d, d)
    # The right-hand side: leading sample dimensions, then the batch with some dimensions 1.
    lead = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    x_batch = tuple(1 if draw(st.booleans()) else n for n in full)
    x = torch.randn(*lead, *x_batch, d)
    if draw(st.booleans()) and x.dim() >= 2:  # a non-contiguous view with the same shape
        x = torch.randn(*lead, *x_batch, d).transpose(0, -1).contiguous().transpose(0, -1)
    return tril, x


@given(ops=operands())
def test_matvec_and_tril_solve_match_torch(ops):
    tril, x = ops
    batch = torch.broadcast_shapes(x.shape[:-1], tril.shape[:-2])
    d = x.shape[-1]
    m = tril.expand(*batch, d, d).clone()
    cols = x.expand(*batch, d).unsqueeze(-1)
    assert_close(_linalg.matvec(tril, x), (m @ cols).squeeze(-1), rtol=TOL, atol=TOL)
    expected = torch.linalg.solve_triangular(m, cols, upper=False).squeeze(-1)
    assert_close(_linalg.tril_solve(tril, x), expected, rtol=TOL, atol=TOL)


def test_shared_factor_is_never_copied():
    """An expanded (stride-0) factor goes through one product without materializing copies."""
    tril = (torch.eye(3) + torch.randn(3, 3).tril(-1)).expand(1000, 3, 3)
    x = torch.randn(5, 1000, 3)
    seen = []

    def op(m, cols):
        seen.append(m.shape)
        return torch.bmm(m, cols)

    y = _linalg._apply(op, tril, x)
    assert seen == [(1, 3, 3)]
    assert_close(y, (tril @ x.unsqueeze(-1)).squeeze(-1), rtol=TOL, atol=TOL)
