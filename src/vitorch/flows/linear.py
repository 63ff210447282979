"""Volume-preserving permutations and LU-parameterized invertible linear layers.

Between autoregressive or coupling layers a permutation (free) or a learned linear
map (Glow's LU layer, ``O(D^2)`` per sample, ``log|det|`` from the diagonal of ``U``)
lets every dimension interact with every other.  Both directions are one pass;
the LU inverse is two triangular solves.

References:
    Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions (NeurIPS 2018), sec. 3.2.
    Durkan et al., Neural Spline Flows (NeurIPS 2019), sec. 3.3 (LU linear layers between splines).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from .base import ParamNet, Transform

__all__ = ["Permutation", "LULinear"]


class Permutation(Transform):
    """``y = x[..., perm]``; ``log|det| = 0``.

    Args:
        dim: event size ``D``.
        perm: a permutation of ``range(D)``; default reverses the dimensions.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]`` (zeros).

    References:
        Dinh, Sohl-Dickstein & Bengio, Density estimation using Real NVP (ICLR 2017), sec. 3.5;
        Kingma & Dhariwal, Glow (NeurIPS 2018), sec. 3.2.
    """

    def __init__(self, dim: int, perm: Sequence[int] | None = None):
        super().__init__(dim)
        perm = list(range(dim))[::-1] if perm is None else [int(i) for i in perm]
        if sorted(perm) != list(range(dim)):
            raise ValueError(f"Permutation: perm must be a permutation of range({dim}); got {perm}")
        # Persistent, so a saved flow keeps a random permutation it was built with.
        self.register_buffer("perm", torch.tensor(perm))
        self.register_buffer("unperm", torch.argsort(self.perm))

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        return x.index_select(-1, self.perm), x.new_zeros(x.shape[:-1])

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        return y.index_select(-1, self.unperm), y.new_zeros(y.shape[:-1])


class LULinear(Transform):
    """``y = L U x + bias`` with ``L`` unit lower triangular and ``U`` upper triangular, ``U_ii = e^{s_i}``.

    Args:
        dim: event size ``D``.
        context_features: ``C``; when positive the ``D^2 + D`` parameters come from a
            hypernetwork of the context (one matrix per datum).
        hidden: hidden widths of that hypernetwork.

    Shapes: ``x, y [*shape, D]``, ``ladj [*shape]``; a context ``[*batch, C]`` broadcasts against ``*shape``.

    References:
        Kingma & Dhariwal, Glow: Generative Flow with Invertible 1x1 Convolutions (NeurIPS 2018), sec. 3.2.
    """

    def __init__(self, dim: int, context_features: int = 0, hidden: Sequence[int] = (64,)):
        super().__init__(dim)
        self.params = ParamNet(dim * dim + dim, context_features, hidden)
        rows, cols = torch.tril_indices(dim, dim, offset=-1)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def _factors(self, context) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        p = self.params(context)
        d, n = self.dim, self.dim * (self.dim - 1) // 2
        batch = p.shape[:-1]
        eye = torch.eye(d, dtype=p.dtype, device=p.device)
        log_diag = p[..., 2 * n : 2 * n + d]
        # In-place writes into fresh zeros: autograd tracks them.
        lower = p.new_zeros(*batch, d, d)
        lower[..., self.rows, self.cols] = p[..., :n]
        upper = p.new_zeros(*batch, d, d)
        upper[..., self.cols, self.rows] = p[..., n : 2 * n]
        lower = lower + eye
        upper = upper + torch.diag_embed(torch.exp(log_diag))
        return lower, upper, log_diag, p[..., 2 * n + d :]

    @staticmethod
    def _matvec(m: Tensor, x: Tensor) -> Tensor:
        return x @ m.mT if m.dim() == 2 else (m @ x.unsqueeze(-1)).squeeze(-1)

    def call_and_ladj(self, x, context=None):
        self._check_input(x)
        lower, upper, log_diag, bias = self._factors(context)
        y = self._matvec(lower, self._matvec(upper, x)) + bias
        return y, log_diag.sum(-1).expand(y.shape[:-1])

    def inverse_and_ladj(self, y, context=None):
        self._check_input(y, "y")
        lower, upper, log_diag, bias = self._factors(context)
        r = y - bias
        if lower.dim() == 2:
            # One solve for all samples: columns of r^T are the right-hand sides.
            flat = r.reshape(-1, self.dim).mT
            u = torch.linalg.solve_triangular(lower, flat, upper=False, unitriangular=True)
            x = torch.linalg.solve_triangular(upper, u, upper=True).mT.reshape(r.shape)
        else:
            shape = torch.broadcast_shapes(lower.shape[:-2], r.shape[:-1])
            rhs = r.expand(*shape, -1).unsqueeze(-1)
            u = torch.linalg.solve_triangular(lower.expand(*shape, -1, -1), rhs, upper=False, unitriangular=True)
            x = torch.linalg.solve_triangular(upper.expand(*shape, -1, -1), u, upper=True).squeeze(-1)
        return x, -log_diag.sum(-1).expand(x.shape[:-1])
