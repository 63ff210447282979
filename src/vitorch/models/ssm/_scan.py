"""A work-efficient associative scan over the leading (time) dimension.

Given elements ``e_1, ..., e_T`` and an associative operator ``(x) ``, the scan
returns the prefixes ``e_1, e_1 (x) e_2, ..., e_1 (x) ... (x) e_T``.  The
recursion pairs neighbours, scans the pairs, then fills in the even positions
(Blelloch, 1990), so it does ``O(T)`` operator calls in ``O(log T)`` rounds; each
round is one batched tensor call, which is what makes the parallel Kalman filter
of Särkkä & García-Fernández (2021) fast on wide hardware.

References:
    Blelloch, Prefix Sums and Their Applications (1990).
    Särkkä & García-Fernández, Temporal Parallelization of Bayesian Smoothers (2021).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

__all__ = ["associative_scan"]

Elems = tuple[Tensor, ...]


def _slice(elems: Elems, s: slice) -> Elems:
    return tuple(e[s] for e in elems)


def _interleave(even: Elems, odd: Elems, n: int) -> Elems:
    out = []
    for a, b in zip(even, odd):
        # The halves usually share a shape; broadcast only when they do not.
        shape = a.shape[1:] if a.shape[1:] == b.shape[1:] else torch.broadcast_tensors(a[:1], b[:1])[0].shape[1:]
        full = a.new_empty((n, *shape))
        full[0::2] = a
        full[1::2] = b
        out.append(full)
    return tuple(out)


def associative_scan(combine: Callable[[Elems, Elems], Elems], elems: Sequence[Tensor]) -> Elems:
    """Inclusive prefix scan of ``elems`` along dimension 0.

    Args:
        combine: associative operator on tuples of tensors, ``combine(earlier,
            later)``; it must broadcast over the leading dimension.
        elems: tuple of tensors, each ``[T, ...]``.

    Returns:
        Tuple of tensors ``[T, ...]``: the inclusive prefixes.
    """
    elems = tuple(elems)
    n = elems[0].shape[0]
    if n < 2:
        return elems
    # Combine neighbours (0,1), (2,3), ...; their scan gives every odd prefix.
    odd = associative_scan(combine, combine(_slice(elems, slice(0, n - 1, 2)), _slice(elems, slice(1, n, 2))))
    # Even prefixes (after the first) extend the odd prefix just before them.
    if n == 2:
        return _interleave(_slice(elems, slice(0, 1)), odd, n)
    rest = _slice(elems, slice(2, n, 2))
    head = _slice(odd, slice(0, -1)) if n % 2 == 0 else odd
    even_tail = combine(head, rest)
    even = tuple(torch.cat([e[:1].expand(1, *t.shape[1:]), t]) for e, t in zip(elems, even_tail))
    return _interleave(even, odd, n)
