"""The fast paths of the masked autoregressive flows against their plain definitions.

* ``MADE.autoregress`` (one hidden-unit block per step) equals the textbook fixed
  point: ``D`` full network passes ``out <- g(v; MADE(out))``, with and without a
  graph (the two code paths), for a context, a permuted order, hidden layers
  narrower than ``D - 1`` (degrees without units) and both univariate maps.
* Row blocks (``by_row_blocks``): a batch larger than one block gives the same values
  and parameter gradients as the rows evaluated one block at a time.

Both are deterministic float64 comparisons; round-off of a few dozen operations is
~1e-14, so ``1e-10`` leaves a wide margin without hiding a wrong mask (an O(1) error).
"""

from __future__ import annotations

import pytest
import torch

from vitorch import flows
from vitorch.flows.base import by_row_blocks

ATOL = 1e-10


def _naive_autoregress(made, v, context, step):
    out = torch.zeros_like(v)
    for _ in range(made.dim):
        out, ladj = step(v, made(out, context))
    return out, ladj.sum(-1)


@pytest.mark.parametrize("transformer", [flows.AffineMap(), flows.RQSpline(bins=3, bound=2.0)], ids=repr)
@pytest.mark.parametrize("hidden", [(5,), (16, 9, 12)])
@pytest.mark.parametrize("grad", [False, True])
def test_autoregress_equals_d_full_passes(transformer, hidden, grad):
    d, c = 7, 3
    order = torch.randperm(d).tolist()
    made = flows.MADE(d, transformer.num_params, hidden, c, order, param_major=not transformer.reduces_params)
    with torch.no_grad():
        for p in made.parameters():
            p.add_(0.5 * torch.randn_like(p))
    v, ctx = 1.5 * torch.randn(4, 2, d), torch.randn(2, c)
    with torch.set_grad_enabled(grad):
        fast, ladj = made.autoregress(v, ctx, transformer.inverse)
        slow, ladj_slow = _naive_autoregress(made, v, ctx, transformer.inverse)
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    torch.testing.assert_close(ladj, ladj_slow, atol=ATOL, rtol=0)
    assert fast.requires_grad == grad


@pytest.mark.parametrize("kind", ["maf_affine", "iaf_spline", "maf_spline"])
def test_row_blocks_match_a_single_block(kind, monkeypatch):
    transformer = flows.RQSpline(bins=4, bound=3.0) if "spline" in kind else flows.AffineMap()
    cls = flows.MAF if kind.startswith("maf") else flows.IAF
    t = cls(3, transformer, hidden=(16, 16), context_features=2)
    x, ctx = torch.randn(50, 3), torch.randn(50, 2)

    def run(rows):
        monkeypatch.setattr(type(t), "_block_rows", lambda self: rows)
        t.zero_grad()
        y, ladj = t.inverse_and_ladj(x, ctx) if kind.startswith("maf") else t.call_and_ladj(x, ctx)
        (y.square().sum() + ladj.sum()).backward()
        return y, ladj, [p.grad.clone() for p in t.parameters()]

    whole, blocked = run(10_000), run(7)
    for a, b in zip(whole[:2] + tuple(whole[2]), blocked[:2] + tuple(blocked[2])):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


def test_row_blocks_split_an_aligned_context_and_keep_a_broadcast_one():
    seen = []

    def fn(v, c):
        seen.append((v.shape[0], None if c is None else tuple(c.shape)))
        y = v + c.sum(-1, keepdim=True)
        return y, y.sum(-1)

    v = torch.randn(10, 4, 3)
    for ctx, expect in [(torch.randn(10, 4, 2), (3, 4, 2)), (torch.randn(4, 2), (4, 2))]:
        seen.clear()
        y, ladj = by_row_blocks(fn, v, ctx, 12)  # 12 vectors = 3 rows of the first dimension
        torch.testing.assert_close(y, v + ctx.sum(-1, keepdim=True), atol=0, rtol=0)
        assert [s[0] for s in seen] == [3, 3, 3, 1] and seen[0][1] == expect
    seen.clear()
    by_row_blocks(fn, torch.randn(1, 3), torch.randn(10, 2), 2)  # v broadcasts: one piece
    assert seen == [(1, (10, 2))]
